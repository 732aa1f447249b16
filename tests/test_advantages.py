"""Advantage estimators, dynamic sampling and overlong shaping against hand-computed values."""

import pytest
import torch

from composer_core import PolicyConfig, compute_advantages
from composer_core.errors import BatchError
from composer_core.objectives.advantages import (
    group_index,
    informative_groups,
    make_inputs,
    overlong_penalty,
)
from composer_core.plugins import registries

REWARDS = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 0.0])
GROUPS = ["a", "a", "a", "b", "b", "c"]
MASK = torch.ones(6, 3, dtype=torch.bool)


def estimate(name: str, rewards: torch.Tensor = REWARDS, groups: object = GROUPS, **params: object) -> torch.Tensor:
    estimator = registries().advantage_estimators.get(name)
    mask = MASK[: rewards.shape[0]]
    return estimator.fn(make_inputs(rewards, mask, groups), estimator.make_params(params))


def test_grpo_group_normalised() -> None:
    advantages = estimate("grpo", REWARDS[:5], GROUPS[:5])  # no singleton
    group_a = REWARDS[:3]
    expected_a = (group_a - group_a.mean()) / (group_a.std() + 1e-6)
    torch.testing.assert_close(advantages[:3, 0], expected_a)
    torch.testing.assert_close(advantages[3:5, 0], torch.zeros(2))  # equal rewards: no signal


def test_dr_grpo_subtracts_the_mean_only() -> None:
    advantages = estimate("dr_grpo", REWARDS[:3], GROUPS[:3])
    torch.testing.assert_close(advantages[:, 0], REWARDS[:3] - REWARDS[:3].mean())


def test_batch_norm_uses_the_batch_std() -> None:
    rewards, groups = REWARDS[:5], GROUPS[:5]
    advantages = estimate("batch_norm", rewards, groups)
    means = torch.tensor([0.5, 0.5, 0.5, 2.0, 2.0])
    torch.testing.assert_close(advantages[:, 0], (rewards - means) / (rewards.std() + 1e-6))


def test_rloo_leave_one_out() -> None:
    advantages = estimate("rloo", REWARDS[:3], GROUPS[:3])
    expected = torch.tensor([1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5])
    torch.testing.assert_close(advantages[:, 0], expected)


def test_reinforce_plus_plus_whitens_returns_over_tokens() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    estimator = registries().advantage_estimators.get("reinforce_plus_plus")
    advantages = estimator.fn(make_inputs(rewards, mask, [0, 1]), estimator.make_params({"gamma": 0.5}))
    returns = torch.tensor([0.5, 1.0, -0.25, -0.5, -1.0])
    whitened = (returns - returns.mean()) / returns.var().add(1e-8).sqrt()
    torch.testing.assert_close(advantages[mask], whitened)
    assert advantages[~mask].eq(0).all()


def test_singleton_group_is_refused_with_the_fix_named() -> None:
    with pytest.raises(BatchError, match=r"rows \[5\] are alone.*n >= 2.*singleton_group='verl'"):
        estimate("grpo")


def test_singleton_group_like_verl_keeps_the_raw_reward() -> None:
    advantages = estimate("grpo", singleton_group="verl")
    assert advantages[5, 0].item() == pytest.approx(0.0 / (1.0 + 1e-6))
    torch.testing.assert_close(estimate("rloo", singleton_group="verl")[5, 0], REWARDS[5])


def test_outcome_reward_lands_on_the_last_response_token() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    inputs = make_inputs(torch.tensor([3.0, 4.0]), mask, [0, 0])
    torch.testing.assert_close(inputs.token_rewards, torch.tensor([[0.0, 3.0, 0.0], [4.0, 0.0, 0.0]]))


def test_group_ids_of_any_hashable_kind() -> None:
    torch.testing.assert_close(group_index(["x", "y", "x"]), torch.tensor([0, 1, 0]))
    torch.testing.assert_close(group_index(torch.tensor([7, 3, 7])), torch.tensor([1, 0, 1]))


def test_compute_advantages_follows_the_objective_default() -> None:
    config = PolicyConfig.model_validate({"objective": {"name": "dr_grpo"}})
    advantages = compute_advantages(config, REWARDS[:3], MASK[:3], GROUPS[:3])
    torch.testing.assert_close(advantages[:, 0], REWARDS[:3] - REWARDS[:3].mean())


def test_kl_in_reward_penalises_before_estimating() -> None:
    config = PolicyConfig.model_validate({"objective": {"name": "dr_grpo"},
                                          "kl": {"coef": 0.5, "placement": "reward", "estimator": "k1"}})
    old = torch.zeros(2, 3)
    ref = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])  # row 1 drifted by 1 nat per token
    advantages = compute_advantages(config, torch.tensor([1.0, 1.0]), torch.ones(2, 3, dtype=torch.bool), [0, 0],
                                    old_log_prob=old, ref_log_prob=ref)
    assert advantages[0, 0] > advantages[1, 0]  # the drifted sample loses 3 * 0.5 of reward
    assert (advantages[0, 0] - advantages[1, 0]).item() == pytest.approx(1.5)
    with pytest.raises(BatchError, match="needs old_log_prob and ref_log_prob"):
        compute_advantages(config, torch.tensor([1.0, 1.0]), torch.ones(2, 3, dtype=torch.bool), [0, 0])


def test_dynamic_sampling_drops_groups_without_signal() -> None:
    keep = informative_groups(REWARDS, GROUPS)
    assert keep.tolist() == [True, True, True, False, False, False]


def test_overlong_penalty_piecewise() -> None:
    lengths = torch.tensor([10, 12, 14, 16, 20])
    penalty = overlong_penalty(lengths, max_length=16, buffer_length=4)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    with pytest.raises(BatchError, match="buffer_length"):
        overlong_penalty(lengths, max_length=16, buffer_length=0)
