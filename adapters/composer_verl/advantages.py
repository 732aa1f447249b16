"""A composer advantage estimator as a VeRL advantage estimator (`algorithm.adv_estimator=composer_<name>`).

VeRL's trainer calls `fn(token_level_rewards=, response_mask=, config=AlgoConfig, index=uid array)` and
expects `(advantages, returns)`, both (batch, response_length). VeRL's algorithm settings that mean the
same thing are honoured: `gamma`, and `norm_adv_by_std_in_grpo=False` (no division by the group std).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from composer_core import registries
from composer_core.errors import BatchError
from composer_core.objectives.advantages import AdvantageEstimator, make_inputs

ESTIMATOR_PREFIX = "composer_"

AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def estimator_name(name: str) -> str:
    """The VeRL `adv_estimator` under which a composer estimator is registered."""
    return f"{ESTIMATOR_PREFIX}{name}"


def algorithm_params(estimator: AdvantageEstimator, config: Any) -> dict[str, Any]:
    """The estimator's settings that VeRL's AlgoConfig carries."""
    if config is None:
        return {}
    fields = estimator.params.model_fields
    params: dict[str, Any] = {}
    if "gamma" in fields and config.get("gamma") is not None:
        params["gamma"] = float(config.get("gamma"))
    if "std_scale" in fields and config.get("norm_adv_by_std_in_grpo", True) is False:
        params["std_scale"] = "none"
    return params


def make_advantage_fn(name: str, composer_params: Mapping[str, Any] | None = None) -> AdvantageFn:
    """A function for VeRL's advantage-estimator registry."""

    def composer_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None,
                           config: Any = None, reward_baselines: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        if reward_baselines is not None:
            raise BatchError(f"{estimator_name(name)} computes its own baseline and does not use the batch's "
                             "reward_baselines (ReMax); use VeRL's remax estimator for those")
        if index is None:
            raise BatchError(f"{estimator_name(name)} is group-relative and needs VeRL's `uid` column as `index` "
                             "(the prompt of each row)")
        estimator = registries().advantage_estimators.get(name)
        params = estimator.make_params({**algorithm_params(estimator, config), **(composer_params or {})})
        with torch.no_grad():
            advantages = estimator.fn(make_inputs(token_level_rewards, response_mask, index), params)
        return advantages, advantages

    composer_advantage.__name__ = f"{estimator_name(name)}_advantage"
    composer_advantage.__doc__ = f"composer-core's `{name}` advantage estimator for VeRL."
    return composer_advantage
