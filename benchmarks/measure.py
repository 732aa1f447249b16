"""Timing (interleaved, in this process) and peak memory (each implementation in a fresh subprocess).

Timing: both sides run on the same tensors, alternating ours/theirs step by step (the order flipping each
repeat) so that load from elsewhere on the machine hits both alike; after warm-up, the median of `repeats`
forward+backward steps timed with time.perf_counter (synchronising first and last on CUDA), and the median of
the process CPU time over the same steps (time.process_time): on a shared machine, time spent descheduled inflates
and scatters the wall clock but not the CPU time (which on CUDA counts the host's work only).
Memory: see `memory_method`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection

import torch

from benchmarks.core import CaseSpec, Impl, Pair, check_agreement, step
from benchmarks.suite import prepare, tiny

MB = 1024 * 1024
MIN_MEASURABLE_MB = 0.5  # below this the RSS growth is page-accounting noise: no memory ratio is reported
MMAP_THRESHOLD = 64 * 1024  # bytes; see _context
IMPLS: tuple[Impl, ...] = ("ours", "theirs")
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class Settings:
    """threads: torch intra-op threads; warmup: untimed steps per side; isolate: measure the memory of each
    (case, implementation) in a fresh subprocess."""

    threads: int
    warmup: int = 1
    isolate: bool = True


@dataclass(frozen=True)
class ImplResult:
    """One side of a case: median and fastest step, every timed step, the growth of peak memory, and the median
    process CPU time of a step."""

    median_ms: float
    min_ms: float
    times_ms: tuple[float, ...]
    peak_mb: float
    cpu_median_ms: float


@dataclass(frozen=True)
class Row:
    """One case: ours and theirs, with the agreement check's largest relative difference."""

    case: str
    kind: str
    baseline: str
    shape: str
    max_relative_difference: float
    ours: ImplResult
    theirs: ImplResult

    @property
    def time_ratio(self) -> float:
        return self.ours.median_ms / self.theirs.median_ms

    @property
    def cpu_time_ratio(self) -> float:
        return self.ours.cpu_median_ms / self.theirs.cpu_median_ms

    @property
    def memory_ratio(self) -> float | None:
        if min(self.ours.peak_mb, self.theirs.peak_mb) < MIN_MEASURABLE_MB:
            return None
        return self.ours.peak_mb / self.theirs.peak_mb


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_method(device: torch.device) -> str:
    """How peak memory is measured on this device, in words for the output."""
    if device.type == "cuda":
        return ("CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the memory "
                "allocated once the inputs are built; one forward+backward step, in a fresh subprocess.")
    return ("CPU (torch has no CPU peak-allocation counter): each (case, implementation) runs in a fresh "
            f"subprocess (glibc MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}, so freed blocks leave RSS at once) that "
            "warms up at a tiny shape, builds its inputs, resets the kernel's peak-RSS mark "
            "(Linux /proc/self/clear_refs; elsewhere the peak so far is the baseline), reads "
            "resource.getrusage().ru_maxrss as the baseline, runs one forward+backward step and reports the "
            "growth of ru_maxrss. It counts everything the step made "
            f"resident (tensors, autograd buffers, allocator overhead); growth under {MIN_MEASURABLE_MB} MB is "
            "page-accounting noise and gets no memory ratio.")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux); elsewhere the peak so far stays the baseline."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


class PeakMemory:
    """Growth of peak memory over a block: CUDA's allocator counter, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_rss()
            self.baseline = _max_rss_bytes()

    def increase_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.baseline) / MB
        return (_max_rss_bytes() - self.baseline) / MB


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(loss_fn: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...], device: torch.device
               ) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds of one forward+backward step."""
    _synchronise(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    step(loss_fn, leaves)
    _synchronise(device)
    return (time.perf_counter() - start) * 1000, (time.process_time() - cpu_start) * 1000


def interleaved_times(pair: Pair, repeats: int, warmup: int, device: torch.device
                      ) -> dict[Impl, list[tuple[float, float]]]:
    """(wall, CPU) milliseconds per step of each side, alternating sides step by step after `warmup` steps of
    each."""
    for _ in range(warmup):
        for impl in IMPLS:
            step(pair.pick(impl), pair.leaves)
    times: dict[Impl, list[tuple[float, float]]] = {impl: [] for impl in IMPLS}
    for repeat in range(repeats):
        for impl in IMPLS if repeat % 2 == 0 else IMPLS[::-1]:
            times[impl].append(timed_step(pair.pick(impl), pair.leaves, device))
    return times


def peak_memory_mb(spec: CaseSpec, impl: Impl, settings: Settings) -> float:
    """Growth of peak memory over one full-size step, after a warm-up at a tiny shape that loads lazy code."""
    torch.set_num_threads(settings.threads)
    device = default_device()
    warm = prepare(tiny(spec), device)
    step(warm.pick(impl), warm.leaves)
    del warm
    pair = prepare(spec, device)
    memory = PeakMemory(device)
    memory.start()
    step(pair.pick(impl), pair.leaves)
    return memory.increase_mb()


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables for the processes started inside the block, then restore them."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def _context() -> multiprocessing.context.BaseContext:
    """forkserver where available: a server that only imported the suite forks each measuring process, so
    every measurement starts fresh without paying the backends' import time again.

    The server (and so every measuring process) runs with glibc's MALLOC_MMAP_THRESHOLD_ fixed at 64 KiB:
    freed blocks leave RSS at once, so peak RSS follows live memory rather than what the allocator caches
    (with the default, dynamic threshold, code that allocates many mid-size blocks swings by hundreds of MB).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks.suite"])
    with _environment(MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD)):
        forkserver.ensure_running()
    return context


def _child(sender: Connection, spec: CaseSpec, impl: Impl, settings: Settings) -> None:
    try:
        sender.send(peak_memory_mb(spec, impl, settings))
    except Exception:
        sender.send(traceback.format_exc())
    finally:
        sender.close()


def peak_memory_isolated(spec: CaseSpec, impl: Impl, settings: Settings) -> float:
    """`peak_memory_mb` in a fresh subprocess; its failure is raised here with the child's traceback."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, spec, impl, settings), name=f"benchmark-{impl}")
    process.start()
    sender.close()
    try:
        result: float | str = receiver.recv()
    except EOFError:
        result = "it exited without a result"
    finally:
        receiver.close()
        process.join()
    if isinstance(result, str):
        raise RuntimeError(f"measuring {spec.name!r} ({impl}) failed in its subprocess (exit code "
                           f"{process.exitcode}):\n{result}")
    return result


def _result(times: list[tuple[float, float]], peak_mb: float) -> ImplResult:
    wall = [ms for ms, _ in times]
    return ImplResult(statistics.median(wall), min(wall), tuple(wall), peak_mb,
                      statistics.median(cpu for _, cpu in times))


def benchmark_case(spec: CaseSpec, settings: Settings) -> Row:
    """Check that ours and theirs agree at the benchmark shape, time them interleaved, then measure memory."""
    torch.set_num_threads(settings.threads)
    device = default_device()
    pair = prepare(spec, device)
    difference = check_agreement(pair, spec.name)
    times = interleaved_times(pair, spec.repeats, settings.warmup, device)
    shape = pair.shape_label
    del pair
    memory = peak_memory_isolated if settings.isolate else peak_memory_mb
    peaks = {impl: memory(spec, impl, settings) for impl in IMPLS}
    return Row(spec.name, spec.kind, spec.baseline, shape, difference, _result(times["ours"], peaks["ours"]),
               _result(times["theirs"], peaks["theirs"]))
