"""The metric stream the guard reads: canonical names, and the per-step history rules are evaluated over.

Each backend maps its own metric names onto these (TRL's `reward`, VeRL's `critic/score/mean`, ...); a metric a
backend cannot observe is simply absent, and the rules that need it stay quiet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

GUARD_METRICS = {
    "loss": "the training loss of the step (all channels)",
    "grad_norm": "the gradient norm before clipping",
    "reward_mean": "the mean reward of the step's completions",
    "reward_std": "the standard deviation of those rewards",
    "entropy": "the mean per-token entropy of the policy on its completions (nats)",
    "kl": "the KL estimate to the reference model (per token)",
    "teacher_divergence": "the self-distillation divergence to the teacher (per targeted token)",
    "clip_fraction": "the fraction of tokens whose ratio was clipped",
    "response_length": "the mean completion length (tokens)",
    "truncated_fraction": "the fraction of completions cut at the length limit",
    "distill_coverage": "the fraction of response tokens the self-distillation channel targets",
    "distill_empty": "1 when the step's self-distillation mask was empty, else 0",
    "zero_std_fraction": "the fraction of groups whose rewards are all equal (no learning signal)",
}


class MetricHistory:
    """The metrics observed so far, step by step; each metric's series holds only the steps that reported it."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self._series: dict[str, list[tuple[int, float]]] = {}
        self._values: dict[str, list[float]] = {}  # the same values without their steps (copied at C speed)
        self.memo: dict[Any, Any] = {}  # rules' incremental state over the series; forgotten on truncation

    def append(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"guard steps must increase: step {step} after step {self.steps[-1]}")
        converted = {name: float(value) for name, value in metrics.items()}  # a bad value leaves no half-step
        self.steps.append(step)
        for name, value in converted.items():
            self._series.setdefault(name, []).append((step, value))
            self._values.setdefault(name, []).append(value)

    @property
    def step(self) -> int:
        """The step observed last."""
        if not self.steps:
            raise ValueError("the guard has observed no step yet")
        return self.steps[-1]

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric, oldest first."""
        return self._series.get(name, [])

    def values(self, name: str) -> list[float]:
        """The metric's values, oldest first (a copy)."""
        return list(self._values.get(name, ()))

    def current(self, name: str) -> float | None:
        """The metric's value at the step observed last; None when that step did not report it."""
        series = self.series(name)
        return series[-1][1] if series and series[-1][0] == self.step else None

    def truncate_after(self, step: int) -> None:
        """Forget everything observed after `step` (a rollback returns the run to it)."""
        self.steps = [kept for kept in self.steps if kept <= step]
        self.memo.clear()
        for name, series in self._series.items():
            self._series[name] = [pair for pair in series if pair[0] <= step]
            self._values[name] = [value for _, value in self._series[name]]


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
