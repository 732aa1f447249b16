"""A composer objective as a VeRL policy-loss function, following VeRL's call contract exactly.

VeRL's actor calls `fn(old_log_prob=, log_prob=, advantages=, response_mask=, loss_agg_mode=, config=,
rollout_is_weights=)` with padded (batch, response_length) tensors and expects `(scalar, metrics)`. The
objective's per-token loss comes from composer-core; aggregation uses VeRL's global batch information, so
the loss stays data-parallel invariant.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from composer_core import registries
from composer_core.objectives import Normaliser, PolicyBatch, aggregate
from composer_core.objectives.aggregation import masked_mean
from composer_core.objectives.base import Objective, ObjectiveParams, TokenLoss
from composer_core.readout import Readout
from composer_verl.actor_settings import global_normaliser, objective_params
from composer_verl.twins import effective_aggregation, twin_metrics

logger = logging.getLogger("composer_verl")

LOSS_MODE_PREFIX = "composer_"
# our per-token statistic -> the metric name VeRL's own policy losses report
VERL_METRIC_NAMES = {"clipfrac": "actor/pg_clipfrac", "approx_kl": "actor/ppo_kl",
                     "clipfrac_lower": "actor/pg_clipfrac_lower"}

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, Any]]]


def loss_mode_name(objective_name: str) -> str:
    """The VeRL `loss_mode` under which a composer objective is registered."""
    return f"{LOSS_MODE_PREFIX}{objective_name}"


def verl_metrics(token: TokenLoss, mask: torch.Tensor) -> dict[str, float]:
    """Masked means of the objective's statistics under VeRL's names (others as `actor/composer/<stat>`), read
    from the device in one transfer."""
    readout = Readout()
    readout.add(**{VERL_METRIC_NAMES.get(name, f"actor/composer/{name}"): masked_mean(stat, mask)
                   for name, stat in token.stats.items()})
    return readout.read()


def verl_divides_by_zero(mask: torch.Tensor, aggregation: str, normaliser: Normaliser) -> bool:
    """Whether VeRL's agg_loss would divide by a zero count here: no response token (token-mean) or no sequence
    with one (seq-mean-*) in the batch it counts."""
    if aggregation == "token-mean":
        count = mask.sum() if normaliser.num_tokens is None else normaliser.num_tokens
    elif aggregation.startswith("seq-mean"):
        count = (mask.sum(-1) > 0).sum() if normaliser.num_sequences is None else normaliser.num_sequences
    else:
        return False
    return bool(count == 0)


@functools.cache
def _warn_empty(aggregation: str) -> None:
    logger.warning("composer policy loss: %s over a batch without a response token is 0/0 in VeRL's agg_loss; the "
                   "composer twin returns the same non-finite loss, so VeRL skips the step as it does for its own "
                   "modes (its engine warns 'grad_norm is not finite')", aggregation)


def policy_loss(objective: Objective, params: ObjectiveParams, *, old_log_prob: torch.Tensor,
                log_prob: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
                loss_agg_mode: str, global_batch_info: Mapping[str, Any],
                rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective's loss aggregated as VeRL aggregates, with VeRL's rollout-correction weights applied.

    A zero count in the denominator gives VeRL's non-finite loss rather than the core's 0: VeRL skips a step
    whose gradient is not finite, while a zero loss would still move the optimizer (momentum, weight decay).
    """
    mask = response_mask.bool()
    token = objective.per_token(PolicyBatch(log_prob, old_log_prob, advantages, mask), params)
    per_token = token.loss if rollout_is_weights is None else token.loss * rollout_is_weights
    normaliser = global_normaliser(global_batch_info, loss_agg_mode)
    loss = aggregate(per_token, mask, loss_agg_mode, normaliser)
    if verl_divides_by_zero(mask, loss_agg_mode, normaliser):
        _warn_empty(loss_agg_mode)
        loss = loss / torch.zeros((), dtype=loss.dtype, device=loss.device)
    return loss, twin_metrics(objective.name, verl_metrics(token, mask))


def make_policy_loss_fn(objective_name: str, composer_params: Mapping[str, Any] | None = None) -> PolicyLossFn:
    """A function for VeRL's policy-loss registry: settings from the ActorConfig it is called with, and the
    conventions of the objective's VeRL twin (aggregation default, forced aggregation, reported metrics)."""

    def composer_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                             response_mask: torch.Tensor, loss_agg_mode: str | None = None, config: Any = None,
                             rollout_is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if config is None:
            raise TypeError(f"{loss_mode_name(objective_name)} needs VeRL's ActorConfig as `config` (its clip "
                            "ratios and global batch info)")
        objective = registries().objectives.get(objective_name)
        params = objective_params(objective, config, composer_params)
        return policy_loss(objective, params, old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                           response_mask=response_mask,
                           loss_agg_mode=effective_aggregation(objective_name, loss_agg_mode),
                           global_batch_info=config.global_batch_info, rollout_is_weights=rollout_is_weights)

    composer_policy_loss.__name__ = f"{loss_mode_name(objective_name)}_policy_loss"
    composer_policy_loss.__doc__ = f"composer-core's `{objective_name}` objective as a VeRL policy loss."
    return composer_policy_loss
