"""VeRL's per-step metric names as the guard's canonical ones (composer_core.guard.metrics.GUARD_METRICS).

VeRL reports each step's metrics in one dict: the actor update's under `actor/` (VeRL's engine adds `loss` and
`grad_norm`, the policy loss `pg_clipfrac`, the composer loss `distill/*`), the behaviour policy's entropy from
the old-log-prob pass, and the batch's reward and length statistics (`critic/score/*`, `response_length/*`).
A canonical metric VeRL does not report is absent, and the rules that read it stay quiet (UNAVAILABLE says why).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# canonical name -> VeRL keys, the first one present wins
VERL_SOURCES: dict[str, tuple[str, ...]] = {
    "loss": ("actor/loss",),  # the engine's summed micro-batch loss: every channel, KL and entropy terms
    "grad_norm": ("actor/grad_norm",),  # before clipping; the mean over the step's mini-batches
    "reward_mean": ("critic/score/mean",),  # the reward function's score (before a KL-in-reward penalty)
    "entropy": ("actor/entropy",),  # the behaviour policy's, from VeRL's old-log-prob forward
    "kl": ("actor/kl_loss", "actor/reward_kl_penalty"),  # KL in the loss, else KL in the reward
    "clip_fraction": ("actor/pg_clipfrac",),
    "response_length": ("response_length/mean",),
    "truncated_fraction": ("response_length/clip_ratio",),
    "distill_coverage": ("actor/distill/coverage",),
    "distill_empty": ("composer/distill_empty_batch",),  # the composer trainer's teacher pass
}
DISTILL_LOSS = "actor/distill/loss"
UNAVAILABLE = {
    "reward_std": "VeRL logs the score's mean, max and min, not its spread",
    "zero_std_fraction": "VeRL logs no per-group reward statistics (its DAPO filter counts them only when on)",
}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def guard_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The canonical metrics found in one step's VeRL metrics; non-finite values are kept (the guard judges them).

    `teacher_divergence` is derived: VeRL's global token normaliser makes `actor/distill/loss` the divergence per
    response token, i.e. the per-targeted-token divergence times the coverage, so it is divided back out."""
    found: dict[str, float] = {}
    for name, keys in VERL_SOURCES.items():
        for key in keys:
            value = _number(metrics.get(key))
            if value is not None:
                found[name] = value
                break
    distill_loss, coverage = _number(metrics.get(DISTILL_LOSS)), found.get("distill_coverage")
    if distill_loss is not None and coverage is not None and coverage > 0:
        found["teacher_divergence"] = distill_loss / coverage
    elif distill_loss is not None and not math.isfinite(distill_loss):
        found["teacher_divergence"] = distill_loss
    return found
