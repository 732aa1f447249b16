"""The TRL trainer's metrics under the guard's canonical names (composer_core.guard.metrics).

TRL keeps each metric as a list that grows over the steps between two logs and is replaced when it logs; the
reader returns, for the step being observed, the mean of the values appended since it last looked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# canonical name -> the trainer's metric names, first found wins (TRL's own loss, then the composer loss)
TRL_NAMES = {
    "reward_mean": ("reward",),
    "reward_std": ("reward_std",),
    "entropy": ("entropy", "composer/policy/entropy_estimate"),
    "kl": ("kl", "composer/policy/kl"),
    "teacher_divergence": ("composer/distill/loss",),
    "clip_fraction": ("clip_ratio/region_mean", "composer/policy/clipfrac"),
    "response_length": ("completions/mean_length",),
    "truncated_fraction": ("completions/clipped_ratio",),
    "distill_coverage": ("composer/distill/coverage",),
    "distill_empty": ("composer/distill/empty_mask",),
    "zero_std_fraction": ("frac_reward_zero_std",),
}


class NewMetricValues:
    """Reads the values a trainer's metric lists gained since the previous read."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[list[float], int]] = {}

    def read(self, metrics: Mapping[str, list[float]]) -> dict[str, float]:
        """The mean of each canonical metric's new values; a metric with none is left out."""
        found: dict[str, float] = {}
        for canonical, names in TRL_NAMES.items():
            for name in names:
                values = self._new(name, metrics.get(name))
                if values:
                    found[canonical] = sum(values) / len(values) if all(map(math.isfinite, values)) else math.nan
                    break
        return found

    def _new(self, name: str, values: list[float] | None) -> list[float]:
        if values is None:
            return []
        seen_list, count = self._seen.get(name, (None, 0))
        start = count if seen_list is values else 0  # TRL starts a new list after each log
        self._seen[name] = (values, len(values))
        return [float(value) for value in values[start:]]
