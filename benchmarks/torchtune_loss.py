"""The torchtune loss component against the core path and torchtune main's GRPO losses:
`python -m benchmarks.torchtune_loss [--quick] [--threads N] [--output DIR]`; writes results/torchtune_loss.json.

Cases, at the policy suite's shapes (float32, right-padded responses filled with 1.0 as torchtune's recipe does):
ComposerGRPOLoss (objective dapo) against torchtune's GRPOLoss and (objective grpo, on-policy) against its
GRPOSimpleLoss, both restated from `torchtune/dev/grpo/loss.py` on GitHub main (not in the 0.6.1 wheel); and
ComposerGRPOLoss against `ComposerLoss.policy_loss` called directly, which is the adapter's own overhead. Each case
first checks that both sides agree (loss and gradient), then times forward+backward alternating the sides step
by step (median of the repeats). Peak memory is CUDA's allocator peak for one step; on CPU it is not measured
here (the suite's subprocess method is in benchmarks.measure). Ratios are ours / theirs: below 1, ours is faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.core import Pair, check_agreement, step
from benchmarks.results_file import write_results
from composer_core import ComposerLoss, PolicyInputs
from composer_torchtune import ComposerGRPOLoss

RESULTS = Path(__file__).parent / "results"
SHAPES = ((64, 2048), (8, 512))
REPEATS = {(64, 2048): 50, (8, 512): 200}
QUICK_SHAPE, QUICK_REPEATS = (2, 8), 2
EPSILON, KL_COEFF = 0.2, 0.05
TOLERANCE = 1e-5
MB = 1024 * 1024

Batch = dict[str, torch.Tensor]


def make_batch(rows: int, length: int, device: torch.device, seed: int = 0) -> Batch:
    """torchtune's recipe tensors: old policy 0.2 nats away, reference 0.1 nats, padding filled with 1.0."""
    generator = torch.Generator().manual_seed(seed)
    pi = -torch.rand(rows, length, generator=generator) * 3 - 0.01
    old = pi + 0.2 * torch.randn(rows, length, generator=generator)
    ref = pi + 0.1 * torch.randn(rows, length, generator=generator)
    lengths = torch.randint(max(length // 4, 1), length + 1, (rows,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    pi, old, ref = (torch.where(mask, tensor, 1.0).to(device) for tensor in (pi, old, ref))
    return {"pi_old_logprobs": old, "pi_logprobs": pi.requires_grad_(), "ref_logprobs": ref,
            "advantages": torch.randn(rows, generator=generator).to(device), "padding_masks": mask.to(device)}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """torchtune's rlhf.masked_mean."""
    return (x * mask).sum(dim=dim) / (mask.sum(dim=dim) + 1e-8)


def torchtune_grpo_loss(batch: Batch) -> torch.Tensor:
    """GRPOLoss: -(masked token mean of min(A r, A clip(r, 1 +- eps)) - kl_coeff * masked token mean of k3)."""
    pi, mask = batch["pi_logprobs"], batch["padding_masks"]
    ratio = torch.exp(pi - batch["pi_old_logprobs"])
    advantages = batch["advantages"][:, None]
    policy = torch.minimum(advantages * ratio.clamp(1 - EPSILON, 1 + EPSILON), advantages * ratio)
    diff = batch["ref_logprobs"] - pi
    return -(_masked_mean(policy, mask) - KL_COEFF * _masked_mean(torch.exp(diff) - diff - 1, mask))


def torchtune_grpo_simple_loss(batch: Batch) -> torch.Tensor:
    """GRPOSimpleLoss: per-sequence masked token mean of -(exp(pi - sg(pi)) A - kl_coeff * k3), then the mean."""
    pi, mask = batch["pi_logprobs"], batch["padding_masks"]
    diff = batch["ref_logprobs"].detach() - pi
    per_token = -(torch.exp(pi - pi.detach()) * batch["advantages"][:, None] - KL_COEFF * (torch.exp(diff) - diff - 1))
    return _masked_mean(per_token, mask, dim=1).mean()


def component(objective: str, batch: Batch) -> Callable[[], torch.Tensor]:
    loss = ComposerGRPOLoss(EPSILON, KL_COEFF, objective=objective)
    return lambda: loss(batch["pi_old_logprobs"], batch["pi_logprobs"], batch["ref_logprobs"], batch["advantages"],
                        padding_masks=batch["padding_masks"])[0]


def core_path(batch: Batch) -> Callable[[], torch.Tensor]:
    """`ComposerLoss.policy_loss` on the same settings: what the component wraps."""
    core = ComposerLoss(ComposerGRPOLoss(EPSILON, KL_COEFF, objective="dapo").config)
    inputs = PolicyInputs(batch["pi_logprobs"], batch["advantages"], batch["padding_masks"],
                          old_log_prob=batch["pi_old_logprobs"], ref_log_prob=batch["ref_logprobs"])
    return lambda: core.policy_loss(inputs)[0]


@dataclass(frozen=True)
class Case:
    name: str
    baseline: str
    pair: Pair
    repeats: int


def cases(rows: int, length: int, repeats: int, device: torch.device) -> list[Case]:
    batch = make_batch(rows, length, device)
    on_policy = {**batch, "pi_old_logprobs": batch["pi_logprobs"].detach()}
    label, leaves = f"{rows}x{length}", (batch["pi_logprobs"],)

    def pair(ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor]) -> Pair:
        return Pair(ours, theirs, leaves, label, TOLERANCE)

    return [Case("ComposerGRPOLoss dapo", "torchtune main GRPOLoss",
                 pair(component("dapo", batch), lambda: torchtune_grpo_loss(batch)), repeats),
            Case("ComposerGRPOLoss grpo, on-policy", "torchtune main GRPOSimpleLoss",
                 pair(component("grpo", on_policy), lambda: torchtune_grpo_simple_loss(on_policy)), repeats),
            Case("ComposerGRPOLoss dapo", "core ComposerLoss.policy_loss",
                 pair(component("dapo", batch), core_path(batch)), repeats)]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def milliseconds(loss_fn: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...], device: torch.device) -> float:
    _synchronise(device)
    start = time.perf_counter()
    step(loss_fn, leaves)
    _synchronise(device)
    return (time.perf_counter() - start) * 1000


def peak_mb(loss_fn: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...], device: torch.device
            ) -> float | None:
    """Growth of CUDA's allocated-memory peak over one step; None on CPU."""
    if device.type != "cuda":
        return None
    _synchronise(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    step(loss_fn, leaves)
    return (torch.cuda.max_memory_allocated(device) - baseline) / MB


@dataclass(frozen=True)
class Row:
    case: str
    baseline: str
    shape: str
    max_relative_difference: float
    ours_ms: float
    theirs_ms: float
    ours_peak_mb: float | None
    theirs_peak_mb: float | None

    @property
    def time_ratio(self) -> float:
        return self.ours_ms / self.theirs_ms

    @property
    def memory_ratio(self) -> float | None:
        if self.ours_peak_mb is None or self.theirs_peak_mb is None or self.theirs_peak_mb <= 0:
            return None
        return self.ours_peak_mb / self.theirs_peak_mb


def measure(case: Case, warmup: int, device: torch.device) -> Row:
    """Agreement first, then interleaved timing (the order flips every repeat), then one step's memory each."""
    pair = case.pair
    difference = check_agreement(pair, f"{case.name} vs {case.baseline}")
    for _ in range(warmup):
        step(pair.ours, pair.leaves)
        step(pair.theirs, pair.leaves)
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for repeat in range(case.repeats):
        for side in ("ours", "theirs") if repeat % 2 == 0 else ("theirs", "ours"):
            times[side].append(milliseconds(pair.pick(side), pair.leaves, device))
    return Row(case.name, case.baseline, pair.shape_label, difference, statistics.median(times["ours"]),
               statistics.median(times["theirs"]), peak_mb(pair.ours, pair.leaves, device),
               peak_mb(pair.theirs, pair.leaves, device))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = ["| case | vs | shape | ours ms | theirs ms | ratio | mem ratio |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.case} | {r.baseline} | {r.shape} | {r.ours_ms:.2f} | {r.theirs_ms:.2f} | {r.time_ratio:.2f} | "
              f"{_ratio(r.memory_ratio)} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torchtune_loss", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny shape, two repeats: checks the harness only")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each side before timing")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for torchtune_loss.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = [(QUICK_SHAPE, QUICK_REPEATS)] if args.quick else [(shape, REPEATS[shape]) for shape in SHAPES]
    rows = []
    for (batch, length), repeats in shapes:
        for case in cases(batch, length, repeats, device):
            rows.append(measure(case, args.warmup, device))
            print(f"{case.name} vs {case.baseline} ({rows[-1].shape}): time x{rows[-1].time_ratio:.2f}", flush=True)
    print(f"\nratios are ours / theirs (below 1: ours faster or smaller)\n\n{table(rows)}")
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": args.threads, "quick": args.quick, "dtype": "float32",
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    results = [{**asdict(row), "time_ratio": row.time_ratio, "memory_ratio": row.memory_ratio} for row in rows]
    path = write_results(args.output, "torchtune_loss.json", {"meta": meta, "results": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
