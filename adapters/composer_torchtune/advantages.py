"""The recipe's `advantage:` component: a composer advantage estimator over the whole global batch.

Every rank passes the rewards of all ranks (gathered) with their prompt-group ids, so advantages come from the
same groups and batch statistics whatever the number of processes. Rewards are outcome scores (one per
completion); the estimator runs on a one-token mask and the sequence advantage is that token's value, which is
what torchtune's loss contract takes (`advantages` of shape (batch,)). For batch-whitening estimators
(reinforce_plus_plus) this whitens over sequences, not tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from composer_core.objectives.advantages import make_inputs
from composer_core.plugins import registries


class GroupAdvantages:
    """Advantages by the registered estimator `estimator` (grpo, dr_grpo, rloo, ...) with its `params`."""

    def __init__(self, estimator: str = "grpo", params: Mapping[str, Any] | None = None) -> None:
        self.estimator = registries().advantage_estimators.get(estimator)
        self.params = self.estimator.make_params(dict(params or {}))

    def __call__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """(batch,) advantages of (batch,) rewards whose rows share a group id per prompt."""
        mask = torch.ones(rewards.shape[0], 1, dtype=torch.bool, device=rewards.device)
        return self.estimator.fn(make_inputs(rewards.float(), mask, group_ids), self.params)[:, 0]
