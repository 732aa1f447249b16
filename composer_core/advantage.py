"""The config-driven entry point of the advantage step, including KL in the reward."""

from __future__ import annotations

from typing import Any

import torch

from composer_core.config import PolicyConfig
from composer_core.errors import BatchError
from composer_core.objectives.advantages import make_inputs
from composer_core.objectives.kl import kl_penalised_rewards


def compute_advantages(config: PolicyConfig, rewards: torch.Tensor, mask: torch.Tensor, group_ids: Any, *,
                       old_log_prob: torch.Tensor | None = None,
                       ref_log_prob: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token advantages (batch, length) from rewards, with the configured estimator.

    rewards: (batch,) outcome scores or (batch, length) token rewards; group_ids: the prompt of each row.
    With KL placed in the reward, `coef * KL(old || ref)` is subtracted per token first (needs both
    log-prob tensors).
    """
    inputs = make_inputs(rewards, mask, group_ids)
    kl = config.kl
    if kl.coef > 0 and kl.placement == "reward":
        if old_log_prob is None or ref_log_prob is None:
            raise BatchError("kl.placement 'reward' needs old_log_prob and ref_log_prob to penalise the rewards")
        penalised = kl_penalised_rewards(inputs.token_rewards, old_log_prob, ref_log_prob, inputs.mask, kl.coef,
                                         kl.estimator, clamp=kl.clamp, log_ratio_clamp=kl.log_ratio_clamp)
        inputs = make_inputs(penalised, inputs.mask, inputs.group_ids)
    estimator, params = config.advantage.resolve(config.objective.name)
    return estimator.fn(inputs, params)
