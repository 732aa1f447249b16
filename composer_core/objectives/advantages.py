"""Advantage estimators, DAPO dynamic sampling and overlong reward shaping.

An estimator maps per-token rewards (an outcome reward may sit on any token: its row sum is the score),
the response mask and the prompt-group index of every row to per-token advantages (zero off the mask).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from composer_core.contracts import check_finite, check_float, check_token_batch
from composer_core.errors import BatchError
from composer_core.objectives.base import ObjectiveParams
from composer_core.plugins import Register, hookimpl

WHITEN_EPS = 1e-8  # verl's masked_whiten


@dataclass(frozen=True)
class AdvantageInputs:
    """token_rewards and mask are (batch, length); group_ids (batch,) holds a dense prompt-group index."""

    token_rewards: torch.Tensor
    mask: torch.Tensor
    group_ids: torch.Tensor

    @property
    def scores(self) -> torch.Tensor:
        return torch.where(self.mask, self.token_rewards, 0.0).sum(-1)


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: `fn(inputs, params) -> (batch, length)` advantages."""

    name: str
    fn: Callable[[AdvantageInputs, Any], torch.Tensor]
    params: type[ObjectiveParams]
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def make_params(self, overrides: Mapping[str, Any] | None = None) -> ObjectiveParams:
        return self.params(**{**self.defaults, **(overrides or {})})


class GroupParams(ObjectiveParams):
    """Group-relative baselines.

    std_scale: divide by the group's std ("group", GRPO), the batch's std ("batch", TRL scale_rewards=batch)
        or not at all ("none", Dr.GRPO).
    epsilon: added to the std (verl 1e-6, TRL 1e-4).
    unbiased_std: Bessel-corrected std (both backends).
    singleton_group: a prompt with one sample has no baseline: "error" stops with the group named; "verl"
        reproduces verl (mean 0, std 1, so the advantage is the raw reward).
    """

    std_scale: Literal["group", "batch", "none"] = "group"
    epsilon: float = Field(1e-6, ge=0.0)
    unbiased_std: bool = True
    singleton_group: Literal["error", "verl"] = "error"


class ReturnParams(ObjectiveParams):
    """REINFORCE++: discount of the per-token return (1.0 for outcome rewards)."""

    gamma: float = Field(1.0, ge=0.0, le=1.0)


def group_index(ids: torch.Tensor | Sequence[Hashable] | Any) -> torch.Tensor:
    """Dense 0..G-1 group index for a tensor, array or list of prompt ids (verl passes numpy uid arrays)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise BatchError(f"group ids must be 1-D (batch,), got shape {tuple(ids.shape)}")
        return torch.unique(ids, return_inverse=True)[1]
    dense: dict[Hashable, int] = {}
    return torch.tensor([dense.setdefault(key, len(dense)) for key in list(ids)], dtype=torch.long)


def make_inputs(rewards: torch.Tensor, mask: torch.Tensor, group_ids: Any) -> AdvantageInputs:
    """Validate and build estimator inputs; `rewards` may be (batch,) outcome scores or (batch, length)."""
    bool_mask = check_token_batch("response_mask", mask)
    check_float("rewards", rewards)
    if rewards.dim() == 1:
        if rewards.shape[0] != bool_mask.shape[0]:
            raise BatchError(f"rewards has {rewards.shape[0]} rows but response_mask has {bool_mask.shape[0]}")
        check_finite("rewards", rewards)
        last = bool_mask.long().cumsum(-1).argmax(-1)  # the last masked token carries the outcome reward
        token_rewards = torch.zeros(bool_mask.shape, dtype=rewards.dtype, device=rewards.device)
        token_rewards[torch.arange(bool_mask.shape[0]), last] = rewards
    else:
        check_token_batch("response_mask", bool_mask, rewards=rewards)
        token_rewards = rewards
    index = group_index(group_ids).to(bool_mask.device)
    if index.shape[0] != bool_mask.shape[0]:
        raise BatchError(f"group_ids has {index.shape[0]} entries but the batch has {bool_mask.shape[0]} rows")
    return AdvantageInputs(token_rewards, bool_mask, index)


def group_counts(index: torch.Tensor) -> torch.Tensor:
    return torch.bincount(index)


def group_mean(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-row mean of its group's scores."""
    counts = group_counts(index).to(scores.dtype)
    sums = torch.zeros(counts.shape, dtype=scores.dtype, device=scores.device).index_add_(0, index, scores)
    return (sums / counts)[index]


def group_std(scores: torch.Tensor, index: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Per-row std of its group's scores (Bessel-corrected when `unbiased`)."""
    counts = group_counts(index).to(scores.dtype)
    squares = (scores - group_mean(scores, index)) ** 2
    sums = torch.zeros(counts.shape, dtype=scores.dtype, device=scores.device).index_add_(0, index, squares)
    dof = (counts - 1).clamp(min=1) if unbiased else counts
    return (sums / dof).sqrt()[index]


def _singletons(index: torch.Tensor) -> torch.Tensor:
    """Bool per row: is it the only member of its group?"""
    return (group_counts(index) == 1)[index]


def _refuse_singletons(index: torch.Tensor, estimator: str) -> None:
    lonely = _singletons(index).nonzero().flatten()
    if lonely.numel():
        raise BatchError(f"{estimator} advantages need at least 2 samples per prompt group, but rows "
                         f"{lonely.tolist()[:8]} are alone in their group; sample n >= 2 completions per prompt, "
                         "or set singleton_group='verl' to use the raw reward as verl does")


def broadcast(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A (batch,) value on every masked token of its row, zero elsewhere."""
    return torch.where(mask, values.unsqueeze(-1), 0.0)


def centred_on_group_mean(inputs: AdvantageInputs, params: GroupParams, estimator: str) -> torch.Tensor:
    """`R - mean_g` per row; a singleton group is refused, or (verl) keeps its raw reward."""
    scores, index = inputs.scores, inputs.group_ids
    if params.singleton_group == "error":
        _refuse_singletons(index, estimator)
    return scores - torch.where(_singletons(index), 0.0, group_mean(scores, index))


@torch.no_grad()
def group_normalised(inputs: AdvantageInputs, params: GroupParams) -> torch.Tensor:
    """GRPO family: `(R - mean_g) / (std + eps)`, std from the group, the batch, or none."""
    scores, index = inputs.scores, inputs.group_ids
    centred = centred_on_group_mean(inputs, params, "group-normalised")
    if params.std_scale == "group":
        std = torch.where(_singletons(index), 1.0, group_std(scores, index, params.unbiased_std))
        centred = centred / (std + params.epsilon)
    elif params.std_scale == "batch":
        std = scores.std(unbiased=params.unbiased_std) if scores.numel() > 1 else scores.new_zeros(())
        centred = centred / (std + params.epsilon)
    return broadcast(centred, inputs.mask)


@torch.no_grad()
def rloo(inputs: AdvantageInputs, params: GroupParams) -> torch.Tensor:
    """Leave-one-out baseline: `R_i - mean_{j != i} R_j` (a singleton keeps its raw reward under "verl")."""
    scores, index = inputs.scores, inputs.group_ids
    if params.singleton_group == "error":
        _refuse_singletons(index, "RLOO")
    counts = group_counts(index).to(scores.dtype)[index]
    loo = (scores - group_mean(scores, index)) * counts / (counts - 1).clamp(min=1)
    return broadcast(torch.where(counts > 1, loo, scores), inputs.mask)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance over the mask (unbiased variance), zero off the mask."""
    count = mask.sum()
    if int(count) < 2:
        raise BatchError(f"whitening needs at least 2 masked tokens in the batch, got {int(count)}")
    mean = torch.where(mask, values, 0.0).sum() / count
    var = torch.where(mask, (values - mean) ** 2, 0.0).sum() / (count - 1)
    return torch.where(mask, (values - mean) * torch.rsqrt(var + WHITEN_EPS), 0.0)


@torch.no_grad()
def reinforce_plus_plus(inputs: AdvantageInputs, params: ReturnParams) -> torch.Tensor:
    """REINFORCE++: discounted per-token returns (carried across masked-out spans), whitened over the batch."""
    rewards, mask = inputs.token_rewards, inputs.mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        step = torch.where(mask[:, t], rewards[:, t], 0.0) + params.gamma * running
        running = torch.where(mask[:, t], step, running)
        returns[:, t] = torch.where(mask[:, t], step, 0.0)
    return masked_whiten(returns, mask)


@torch.no_grad()
def reinforce_plus_plus_baseline(inputs: AdvantageInputs, params: GroupParams) -> torch.Tensor:
    """REINFORCE++ with a group-mean baseline, then whitened over the batch."""
    centred = centred_on_group_mean(inputs, params, "REINFORCE++-baseline")
    return masked_whiten(broadcast(centred, inputs.mask), inputs.mask)


BUILTIN_ESTIMATORS = (
    AdvantageEstimator("grpo", group_normalised, GroupParams, "(R - group mean) / (group std + eps)"),
    AdvantageEstimator("dr_grpo", group_normalised, GroupParams, "R - group mean (no std division)",
                       defaults={"std_scale": "none"}),
    AdvantageEstimator("batch_norm", group_normalised, GroupParams,
                       "(R - group mean) / (batch std + eps) (TRL scale_rewards='batch')",
                       defaults={"std_scale": "batch"}),
    AdvantageEstimator("rloo", rloo, GroupParams, "R - mean of the other samples of the group"),
    AdvantageEstimator("reinforce_plus_plus", reinforce_plus_plus, ReturnParams,
                       "discounted token returns, whitened over the batch"),
    AdvantageEstimator("reinforce_plus_plus_baseline", reinforce_plus_plus_baseline, GroupParams,
                       "R - group mean, whitened over the batch"),
)


@hookimpl
def register_advantage_estimators(register: Register) -> None:
    for estimator in BUILTIN_ESTIMATORS:
        register(estimator)


def informative_groups(scores: torch.Tensor, group_ids: Any) -> torch.Tensor:
    """DAPO dynamic sampling: bool per row, False for rows of groups whose scores are all equal.

    Such groups have zero advantage and teach nothing; the caller drops them and samples more prompts
    until the batch is full (verl's `algorithm.filter_groups`).
    """
    check_float("scores", scores)
    check_finite("scores", scores)
    index = group_index(group_ids).to(scores.device)
    spread = torch.zeros(int(index.max()) + 1, dtype=scores.dtype, device=scores.device)
    spread.index_add_(0, index, (scores - group_mean(scores, index)).abs())
    return spread[index] > 0


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer_length: int,
                     penalty_factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment, added to the reward.

    0 up to `max_length - buffer_length`; falls linearly to `-penalty_factor` at `max_length`;
    `-penalty_factor` beyond it.
    """
    if not 0 < buffer_length <= max_length:
        raise BatchError(f"buffer_length must be in (0, max_length={max_length}], got {buffer_length}")
    expected = max_length - buffer_length
    excess = (lengths.to(torch.float32) - expected).clamp(min=0)
    return -(excess / buffer_length).clamp(max=1.0) * penalty_factor
