"""Each built-in objective's VeRL twin: the VeRL loss mode with the same math, and what that mode does besides.

Switching `loss_mode` from a VeRL mode to its composer twin must change nothing. The math is shared; these are
the conventions VeRL's functions add around it: the `loss_agg_mode` default of the function's signature, an
aggregation VeRL forces whatever the config says (sapo), and the metric keys the mode reports (VeRL reports some
as a constant 0 "for compatibility"; the twin reports the same keys, so dashboards and metric reduction see the
same stream). An objective without a twin (a plugin's) keeps the plain contract: the aggregation it is given and
its own statistics.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger("composer_verl")

CLIPFRAC, PPO_KL, CLIPFRAC_LOWER = "actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"
ALL_CLIP_METRICS = (CLIPFRAC, PPO_KL, CLIPFRAC_LOWER)


@dataclass(frozen=True)
class VerlTwin:
    """mode: VeRL's loss mode; default_aggregation: its signature's loss_agg_mode default; forced_aggregation:
    the mode it aggregates with whatever it is passed (None: the one passed); metrics: the keys it reports."""

    mode: str
    default_aggregation: str = "token-mean"
    forced_aggregation: str | None = None
    metrics: tuple[str, ...] = ALL_CLIP_METRICS


VANILLA = VerlTwin("vanilla")
VERL_TWINS: dict[str, VerlTwin] = {
    "ppo": VANILLA, "grpo": VANILLA, "dr_grpo": VANILLA, "dapo": VANILLA, "bnpo": VANILLA,
    "gspo": VerlTwin("gspo", default_aggregation="seq-mean-token-mean"),
    "cispo": VerlTwin("cispo"),
    "sapo": VerlTwin("sapo", default_aggregation="seq-mean-token-mean", forced_aggregation="seq-mean-token-mean"),
    "reinforce": VerlTwin("gpg", metrics=()),
}


def effective_aggregation(objective_name: str, requested: str | None) -> str:
    """The aggregation VeRL's twin would use for `requested` (None: the twin's signature default)."""
    twin = VERL_TWINS.get(objective_name)
    if requested is None:
        return twin.default_aggregation if twin else "token-mean"
    if twin is None or twin.forced_aggregation is None or twin.forced_aggregation == requested:
        return requested
    _warn_forced(objective_name, requested, twin)
    return twin.forced_aggregation


@functools.cache
def _warn_forced(objective_name: str, requested: str, twin: VerlTwin) -> None:
    """Once per process and setting: VeRL ignores the setting silently; the twin does the same, but says so."""
    logger.warning("composer_%s: loss_agg_mode=%s is ignored and %s used, as VeRL's own %r mode does; set "
                   "actor_rollout_ref.actor.loss_agg_mode=%s to say so", objective_name, requested,
                   twin.forced_aggregation, twin.mode, twin.forced_aggregation)


def twin_metrics(objective_name: str, computed: dict[str, float]) -> dict[str, float]:
    """`computed` completed with the keys VeRL's twin reports and the objective has no statistic for (VeRL's 0)."""
    twin = VERL_TWINS.get(objective_name)
    if twin is None:
        return computed
    return {**{key: 0.0 for key in twin.metrics}, **computed}
