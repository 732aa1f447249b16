"""The channel-1 contract: a policy batch in, a per-token loss out; an objective bundles its defaults."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from composer_core.objectives.aggregation import AggregationMode


@dataclass(frozen=True)
class PolicyBatch:
    """Per-token inputs of a policy objective, all (batch, response_length).

    log_prob carries the gradient; old_log_prob is the behaviour policy (equal to log_prob.detach() when
    fully on-policy); advantages are already broadcast to tokens; mask is bool.
    """

    log_prob: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class TokenLoss:
    """A per-token loss and per-token statistics that are reported as masked means (for example clip flags)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class ObjectiveParams(BaseModel):
    """Base of every objective's settings: frozen, and unknown keys are errors naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PerTokenLoss = Callable[[PolicyBatch, Any], TokenLoss]


@dataclass(frozen=True)
class Objective:
    """A registered channel-1 objective.

    per_token: the surrogate, `(PolicyBatch, params) -> TokenLoss`.
    params: the pydantic model of its settings; `defaults` override that model's own defaults.
    aggregation / normaliser: how the per-token loss becomes a scalar by default ("global" uses the counts
        the caller passes in its Normaliser, "local" always counts the batch at hand).
    advantage: the estimator it is normally paired with.
    """

    name: str
    per_token: PerTokenLoss
    params: type[ObjectiveParams]
    aggregation: AggregationMode
    advantage: str
    description: str
    normaliser: Literal["global", "local"] = "global"
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def make_params(self, overrides: Mapping[str, Any] | None = None) -> ObjectiveParams:
        """Validate settings: the objective's defaults, then the user's overrides."""
        return self.params(**{**self.defaults, **(overrides or {})})
