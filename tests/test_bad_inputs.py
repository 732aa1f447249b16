"""Bad tensors at the loss boundary: each error says what was wrong and what to do."""

import pytest
import torch
from batches import random_policy_tensors

from composer_core import BatchError, ComposerConfig, ComposerLoss, PolicyConfig, PolicyInputs, compute_advantages


def policy(**overrides: torch.Tensor) -> PolicyInputs:
    tensors = {**random_policy_tensors(), **overrides}
    return PolicyInputs(tensors["log_prob"], tensors["advantages"], tensors["mask"],
                        old_log_prob=tensors["old_log_prob"])


def test_mismatched_shapes() -> None:
    with pytest.raises(BatchError, match=r"old_log_prob has shape \(6, 8\) but policy mask has shape \(6, 9\)"):
        ComposerLoss()(policy=policy(old_log_prob=torch.zeros(6, 8)))
    with pytest.raises(BatchError, match="advantages has 5 rows but the policy mask has 6"):
        ComposerLoss()(policy=policy(advantages=torch.zeros(5)))


def test_wrong_dtypes() -> None:
    with pytest.raises(BatchError, match="log_prob must be a floating-point tensor.*int64"):
        ComposerLoss()(policy=policy(log_prob=torch.zeros(6, 9, dtype=torch.long)))
    with pytest.raises(BatchError, match="policy mask must hold only 0 and 1"):
        ComposerLoss()(policy=policy(mask=torch.full((6, 9), 2.0)))
    with pytest.raises(BatchError, match="policy mask must be bool or a 0/1 numeric tensor"):
        ComposerLoss()(policy=policy(mask=torch.zeros(6, 9, dtype=torch.complex64)))


def test_nan_and_inf_inside_the_mask_are_located() -> None:
    old = random_policy_tensors()["old_log_prob"].clone()
    old[2, 0] = float("nan")
    with pytest.raises(BatchError, match=r"old_log_prob holds a non-finite value \(nan\) at position \(2, 0\)"):
        ComposerLoss()(policy=policy(old_log_prob=old))
    advantages = torch.zeros(6)
    advantages[3] = float("inf")
    with pytest.raises(BatchError, match="advantages holds a non-finite value"):
        ComposerLoss()(policy=policy(advantages=advantages))


def test_nan_outside_the_mask_is_padding_and_ignored() -> None:
    tensors = random_policy_tensors()
    old = tensors["old_log_prob"].masked_fill(~tensors["mask"], float("nan"))
    out = ComposerLoss()(policy=policy(old_log_prob=old))
    assert torch.isfinite(out.loss)


def test_all_masked_rows() -> None:
    mask = random_policy_tensors()["mask"].clone()
    mask[4] = False
    with pytest.raises(BatchError, match=r"policy mask has rows with no tokens: \[4\].*allow_empty_rows"):
        ComposerLoss()(policy=policy(mask=mask))
    lenient = ComposerLoss(ComposerConfig.from_mapping({"policy": {"allow_empty_rows": True}}))
    assert torch.isfinite(lenient(policy=policy(mask=mask)).loss)


def test_groups_of_size_one() -> None:
    mask = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(BatchError, match=r"rows \[2\] are alone in their group"):
        compute_advantages(PolicyConfig(), torch.tensor([1.0, 0.0, 1.0]), mask, [0, 0, 1])


def test_nan_rewards() -> None:
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(BatchError, match="rewards holds a non-finite value"):
        compute_advantages(PolicyConfig(), torch.tensor([1.0, float("nan")]), mask, [0, 0])


def test_non_tensor_input() -> None:
    with pytest.raises(BatchError, match="log_prob must be a torch.Tensor, got list"):
        ComposerLoss()(policy=policy(log_prob=[[0.0]]))
