"""Bytes a replica sends per inner step: DiLoCo on torchft (outer sync every H inner steps, optionally in fragments)
against plain data-parallel training (DDP: an all-reduce of every gradient at every step), on the embedded model.

Measured, not computed: two real processes train the model on random tokens over gloo on loopback, and every tensor
handed to a collective is counted where it enters the process group (DiLoCo: a counting subclass of torchft's
ProcessGroupGloo under the Manager; DDP: a comm hook counting each gradient bucket before the stock all-reduce hook).
The payload is what each replica contributes; a ring all-reduce puts about 2(n-1)/n times that on the wire for both
methods alike, so the ratio is the number to read (goal: 1/H; with fragments, the peak of one sync is 1/fragments of
the model, split as a replica splits its policy: composer_diloco.outer). The Lighthouse runs in-process; init_sync is
off (both replicas start from the same weights), so no checkpoint crosses the network.

Run `python -m benchmarks.diloco_bytes [--steps 32] [--quick]`; writes benchmarks/results/diloco_bytes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import socket
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from composer_core.files import write_text_atomic
from composer_diloco.outer import split_fragments

RESULTS = Path(__file__).parent / "results"
TIMEOUT = timedelta(seconds=60)
BATCH, LENGTH = 4, 32


@dataclass(frozen=True)
class Case:
    method: str  # "ddp" or "diloco"
    sync_every: int = 1
    fragments: int = 1


@dataclass(frozen=True)
class Row:
    case: Case
    parameters: int
    parameter_bytes: int
    steps: int
    bytes_per_step: list[int]  # replica 0's payload at each inner step

    @property
    def mean_per_step(self) -> float:
        return sum(self.bytes_per_step) / len(self.bytes_per_step)

    @property
    def peak_per_sync(self) -> int:
        return max(self.bytes_per_step)


def embedded_model() -> nn.Module:
    """The embedded Qwen2 (the default job's model), with the same weights in every process."""
    from transformers import AutoModelForCausalLM

    from composer_trl.defaults import EMBEDDED_MODEL

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32)


def inner_step(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    tokens = torch.randint(model.config.vocab_size, (BATCH, LENGTH), generator=generator)
    loss = model(input_ids=tokens, labels=tokens).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def counting_gloo() -> Any:
    """A torchft ProcessGroupGloo that adds up the bytes of every tensor handed to an all-reduce."""
    from torchft.process_group import ProcessGroupGloo

    class CountingGloo(ProcessGroupGloo):
        sent = 0

        def allreduce(self, tensors: list[torch.Tensor], opts: object) -> Any:
            self.sent += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
            return super().allreduce(tensors, opts)

    return CountingGloo(timeout=TIMEOUT)


def diloco_replica(rank: int, case: Case, steps: int, lighthouse: str, results: Any) -> None:
    from torchft.local_sgd import DiLoCo
    from torchft.manager import Manager

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    model = embedded_model()
    inner = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, betas=(0.9, 0.95))
    fragments = split_fragments(list(model.parameters()), case.fragments)  # as a replica splits its policy
    outer = [torch.optim.SGD(fragment.parameters(), lr=0.7, momentum=0.9, nesterov=True) for fragment in fragments]
    pg = counting_gloo()
    manager = Manager(pg=pg, load_state_dict=model.load_state_dict, state_dict=model.state_dict, min_replica_size=2,
                      use_async_quorum=False, timeout=TIMEOUT, quorum_timeout=TIMEOUT, connect_timeout=TIMEOUT,
                      rank=0, world_size=1, store_addr="127.0.0.1", store_port=store.port, lighthouse_addr=lighthouse,
                      replica_id=f"bench_{rank}", hostname="127.0.0.1", init_sync=False)
    generator = torch.Generator().manual_seed(rank)
    per_step = []
    try:
        with DiLoCo(manager, fragments, inner, outer, sync_every=case.sync_every, pin_memory=False):
            for _ in range(steps):
                before = pg.sent
                inner_step(model, inner, generator)
                per_step.append(pg.sent - before)
    finally:
        manager.shutdown(wait=False)
    results.put((rank, per_step))


def counting_hook(state: list[int], bucket):  # unannotated: DDP refuses the string annotations of this module
    """DDP's stock all-reduce hook, after adding the bucket's (a dist.GradBucket) bytes to `state`."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buffer = bucket.buffer()
    state.append(buffer.numel() * buffer.element_size())
    return allreduce_hook(None, bucket)


def ddp_replica(rank: int, port: int, steps: int, results: Any) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=TIMEOUT)
    model = torch.nn.parallel.DistributedDataParallel(embedded_model())
    sent: list[int] = []
    model.register_comm_hook(sent, counting_hook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(rank)
    per_step = []
    for _ in range(steps):
        before = sum(sent)
        tokens = torch.randint(model.module.config.vocab_size, (BATCH, LENGTH), generator=generator)
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        per_step.append(sum(sent) - before)
    dist.destroy_process_group()
    results.put((rank, per_step))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def collect(results: Any, processes: list[Any], case: Case, timeout_s: float = 300.0) -> tuple[int, list[int]]:
    """One replica's result, waiting at most `timeout_s`; a replica that exits without one is an error at once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            failed = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"{case}: a replica exited with code {failed[0]}") from None
    raise TimeoutError(f"{case}: no result within {timeout_s:.0f} s")


def measure(case: Case, steps: int) -> list[int]:
    """Replica 0's payload at each of `steps` inner steps, from two processes training together."""
    context = mp.get_context("spawn")
    results = context.Queue()
    lighthouse = None
    if case.method == "diloco":
        from torchft.coordination import LighthouseServer

        lighthouse = LighthouseServer(bind="127.0.0.1:0", min_replicas=2)
        target, extra = diloco_replica, (case, steps, lighthouse.address().replace(socket.gethostname(), "127.0.0.1"))
    else:
        target, extra = ddp_replica, (free_port(), steps)
    processes = [context.Process(target=target, args=(rank, *extra, results)) for rank in range(2)]
    try:
        for process in processes:
            process.start()
        collected = dict(collect(results, processes, case) for _ in processes)
        for process in processes:
            process.join(timeout=60)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        if lighthouse is not None:
            lighthouse.shutdown()
    return collected[0]


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("ddp"), Case("diloco", 4), Case("diloco", 4, 2)]
    return [Case("ddp"), *(Case("diloco", h) for h in (4, 8, 16)), *(Case("diloco", h, 2) for h in (4, 8, 16)),
            Case("diloco", 16, 4)]


def report(rows: list[Row]) -> str:
    """A markdown table of the rows, each against the DDP row."""
    baseline = next(row for row in rows if row.case.method == "ddp").mean_per_step
    lines = ["| method | H (sync_every) | fragments | bytes / inner step | ratio to DDP | 1/H "
             "| peak bytes of one sync |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        case = row.case
        lines.append(f"| {case.method} | {case.sync_every} | {case.fragments} | {row.mean_per_step:,.0f} | "
                     f"{row.mean_per_step / baseline:.4f} | {1 / case.sync_every:.4f} | {row.peak_per_sync:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=32, help="inner steps per case (a multiple of every H)")
    parser.add_argument("--quick", action="store_true", help="three cases, 8 steps")
    args = parser.parse_args()
    steps = 8 if args.quick else args.steps
    model = embedded_model()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    parameter_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    rows = [Row(case, parameters, parameter_bytes, steps, measure(case, steps)) for case in cases(args.quick)]
    table = report(rows)
    print(f"embedded model: {parameters:,} parameters, {parameter_bytes:,} bytes (float32)\n{table}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("diloco_bytes_quick.json" if args.quick else "diloco_bytes.json")
    write_text_atomic(out, json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "torch": torch.__version__},
                               "rows": [{**asdict(row), "mean_per_step": row.mean_per_step,
                                         "peak_per_sync": row.peak_per_sync} for row in rows],
                               "table": table}, indent=2) + "\n", what="benchmark results")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
