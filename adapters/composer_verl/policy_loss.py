"""A composer objective as a VeRL policy-loss function, following VeRL's call contract exactly.

VeRL's actor calls `fn(old_log_prob=, log_prob=, advantages=, response_mask=, loss_agg_mode=, config=,
rollout_is_weights=)` with padded (batch, response_length) tensors and expects `(scalar, metrics)`. The
objective's per-token loss comes from composer-core; aggregation uses VeRL's global batch information, so
the loss stays data-parallel invariant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from composer_core import registries
from composer_core.objectives import PolicyBatch, aggregate
from composer_core.objectives.aggregation import masked_mean
from composer_core.objectives.base import Objective, ObjectiveParams, TokenLoss
from composer_verl.actor_settings import global_normaliser, objective_params

LOSS_MODE_PREFIX = "composer_"
# our per-token statistic -> the metric name VeRL's own policy losses report
VERL_METRIC_NAMES = {"clipfrac": "actor/pg_clipfrac", "approx_kl": "actor/ppo_kl",
                     "clipfrac_lower": "actor/pg_clipfrac_lower"}

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]


def loss_mode_name(objective_name: str) -> str:
    """The VeRL `loss_mode` under which a composer objective is registered."""
    return f"{LOSS_MODE_PREFIX}{objective_name}"


def verl_metrics(token: TokenLoss, mask: torch.Tensor) -> dict[str, float]:
    """Masked means of the objective's statistics under VeRL's names (others as `actor/composer/<stat>`)."""
    return {VERL_METRIC_NAMES.get(name, f"actor/composer/{name}"): masked_mean(stat, mask).item()
            for name, stat in token.stats.items()}


def policy_loss(objective: Objective, params: ObjectiveParams, *, old_log_prob: torch.Tensor,
                log_prob: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
                loss_agg_mode: str, global_batch_info: Mapping[str, Any],
                rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's loss aggregated as VeRL aggregates, with VeRL's rollout-correction weights applied."""
    mask = response_mask.bool()
    token = objective.per_token(PolicyBatch(log_prob, old_log_prob, advantages, mask), params)
    per_token = token.loss if rollout_is_weights is None else token.loss * rollout_is_weights
    loss = aggregate(per_token, mask, loss_agg_mode, global_normaliser(global_batch_info, loss_agg_mode))
    return loss, verl_metrics(token, mask)


def make_policy_loss_fn(objective_name: str, composer_params: Mapping[str, Any] | None = None) -> PolicyLossFn:
    """A function for VeRL's policy-loss registry: settings from the ActorConfig it is called with."""

    def composer_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                             response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                             rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if config is None:
            raise TypeError(f"{loss_mode_name(objective_name)} needs VeRL's ActorConfig as `config` (its clip "
                            "ratios and global batch info)")
        objective = registries().objectives.get(objective_name)
        params = objective_params(objective, config, composer_params)
        return policy_loss(objective, params, old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                           response_mask=response_mask, loss_agg_mode=loss_agg_mode,
                           global_batch_info=config.global_batch_info, rollout_is_weights=rollout_is_weights)

    composer_policy_loss.__name__ = f"{loss_mode_name(objective_name)}_policy_loss"
    composer_policy_loss.__doc__ = f"composer-core's `{objective_name}` objective as a VeRL policy loss."
    return composer_policy_loss
