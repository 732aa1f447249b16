"""Sandbox throughput: `python -m benchmarks.sandbox [--runs N] [--concurrency C] [--quick]`.

Runs of a trivial Python program per second, sandboxed (the local backend: namespaces, a fresh root and work dir,
rlimits) against plain `subprocess.run` of the same interpreter, one at a time and then C at a time (the sandbox's
max_concurrency; plain runs through a thread pool of the same size). The ratio is sandboxed / plain runs per
second: the share of plain throughput that the isolation keeps. The two sides alternate in blocks so that load
from elsewhere hits both alike. Writes benchmarks/results/sandbox.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.results_file import write_results
from composer_core.sandbox import SandboxConfig, SandboxRequest
from composer_core.sandbox.local import base_python
from composer_core.sandbox.runner import Sandbox

RESULTS = Path(__file__).parent / "results"
PROGRAM = "print('ok')"
BLOCKS = 4  # each side runs in this many alternating blocks


@dataclass(frozen=True)
class Row:
    """One setting: runs per second of each side, and their ratio."""

    case: str
    concurrency: int
    runs: int
    sandboxed_per_s: float
    plain_per_s: float

    @property
    def ratio(self) -> float:
        return self.sandboxed_per_s / self.plain_per_s


def plain_run() -> None:
    result = subprocess.run([base_python(), "-c", PROGRAM], capture_output=True, timeout=60, check=True)
    if result.stdout != b"ok\n":
        raise RuntimeError(f"plain run printed {result.stdout!r}")


def sandboxed_run(sandbox: Sandbox) -> None:
    result = sandbox.run(SandboxRequest(code=PROGRAM))
    if not result.ok or result.stdout != "ok\n":
        raise RuntimeError(f"sandboxed run failed: {result}")


def runs_per_second(run: Callable[[], None], runs: int, concurrency: int) -> float:
    started = time.perf_counter()
    if concurrency == 1:
        for _ in range(runs):
            run()
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda _: run(), range(runs)))
    return runs / (time.perf_counter() - started)


def measure(case: str, runs: int, concurrency: int) -> Row:
    """Both sides in alternating blocks (after one warm-up run each); runs per second over all blocks."""
    sandbox = Sandbox(SandboxConfig(max_concurrency=concurrency))
    sides: dict[str, Callable[[], None]] = {"sandboxed": lambda: sandboxed_run(sandbox), "plain": plain_run}
    for run in sides.values():
        run()
    seconds = {name: 0.0 for name in sides}
    block = max(1, runs // BLOCKS)
    for index in range(BLOCKS):
        for name in sides if index % 2 == 0 else reversed(list(sides)):
            seconds[name] += block / runs_per_second(sides[name], block, concurrency)
    total = block * BLOCKS
    return Row(case, concurrency, total, total / seconds["sandboxed"], total / seconds["plain"])


def format_table(rows: list[Row]) -> str:
    lines = ["| case | concurrency | runs | sandboxed runs/s | plain runs/s | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {row.case} | {row.concurrency} | {row.runs} | {row.sandboxed_per_s:.1f} | {row.plain_per_s:.1f} | "
              f"{row.ratio:.2f} |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs of each side per setting (default 200)")
    parser.add_argument("--concurrency", type=int, default=SandboxConfig().max_concurrency,
                        help="runs at once in the second setting (default: the sandbox's default, min(cores, 8))")
    parser.add_argument("--quick", action="store_true", help="8 runs per setting: checks the harness only")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for sandbox.json")
    args = parser.parse_args(argv)
    runs = 8 if args.quick else args.runs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"sandbox throughput on {platform.processor() or platform.machine()} ({cores} usable cores), "
          f"load average {os.getloadavg() if hasattr(os, 'getloadavg') else '-'}: {PROGRAM!r}, {runs} runs a side")
    rows = [measure("one at a time", runs, 1), measure("max_concurrency", runs, args.concurrency)]
    print(format_table(rows))
    results = [{**asdict(row), "ratio": row.ratio} for row in rows]
    path = write_results(args.output, "sandbox.json", {"program": PROGRAM, "cores": cores, "quick": args.quick,
                                                       "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
