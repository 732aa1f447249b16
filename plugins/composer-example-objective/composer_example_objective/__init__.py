"""An example composer-core plugin: the objective `tis_reinforce`.

REINFORCE with a truncated importance weight (TIS): the per-token loss is `-min(sg(r), cap) * A * log pi`
with `r = pi / pi_old`. Off-policy tokens are reweighted towards the current policy, but never by more
than `cap`, which bounds the variance that stale rollouts add; the weight is stopped, so the gradient is
that of REINFORCE scaled per token.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from composer_core.objectives import Objective, ObjectiveParams, PolicyBatch, TokenLoss
from composer_core.plugins import hookimpl

__all__ = ["TIS_REINFORCE", "TISParams", "register_objectives", "tis_reinforce"]


class TISParams(ObjectiveParams):
    """Settings of `tis_reinforce`; unknown keys are errors (inherited from ObjectiveParams)."""

    cap: float = Field(2.0, gt=0.0, description="upper bound of the stopped importance weight")


def tis_reinforce(batch: PolicyBatch, params: TISParams) -> TokenLoss:
    """`-min(sg(r), cap) * A * log pi`, with the fraction of truncated tokens as a statistic."""
    log_ratio = (batch.log_prob - batch.old_log_prob).detach()
    ratio = log_ratio.exp()
    weight = ratio.clamp(max=params.cap)
    loss = -weight * batch.advantages * batch.log_prob
    return TokenLoss(loss, {"truncfrac": (ratio > params.cap).float(), "approx_kl": -log_ratio})


TIS_REINFORCE = Objective(
    name="tis_reinforce",
    per_token=tis_reinforce,
    params=TISParams,
    aggregation="token-mean",
    advantage="grpo",
    description="REINFORCE with a truncated, stopped importance weight: -min(sg(r), cap) A log pi",
)


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    """composer-core calls this once when it loads plugins; each `register` call adds one objective."""
    register(TIS_REINFORCE)
