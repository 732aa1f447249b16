"""Channel 3 (composer-core's own research channel): DPO-family losses."""

import pytest
import torch
import torch.nn.functional as F

from composer_core.errors import BatchError
from composer_core.plugins import registries
from composer_core.preference import PreferenceBatch


def pairs(**lengths: torch.Tensor) -> PreferenceBatch:
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(5, generator=generator, dtype=torch.float64) * 3 for _ in range(4)]
    return PreferenceBatch(*values, **lengths)


def loss(name: str, batch: PreferenceBatch, beta: float = 0.1, smoothing: float = 0.0) -> torch.Tensor:
    return registries().preference_losses.get(name).fn(batch, beta, smoothing)


def test_delta_is_the_difference_of_log_ratios() -> None:
    batch = pairs()
    expected = (batch.chosen_log_prob - batch.ref_chosen_log_prob) - (
        batch.rejected_log_prob - batch.ref_rejected_log_prob)
    torch.testing.assert_close(batch.delta, expected)


def test_sigmoid_hinge_robust_ipo() -> None:
    batch = pairs(chosen_length=torch.tensor([4, 5, 6, 7, 8.0], dtype=torch.float64),
                  rejected_length=torch.tensor([2, 2, 2, 2, 2.0], dtype=torch.float64))
    torch.testing.assert_close(loss("sigmoid", batch), -F.logsigmoid(0.1 * batch.delta))
    torch.testing.assert_close(loss("hinge", batch), torch.relu(1 - 0.1 * batch.delta))
    noisy = loss("robust", batch, smoothing=0.2)
    expected = (-0.8 * F.logsigmoid(0.1 * batch.delta) + 0.2 * F.logsigmoid(-0.1 * batch.delta)) / 0.6
    torch.testing.assert_close(noisy, expected)
    normalised = batch.chosen_log_ratio / batch.chosen_length - batch.rejected_log_ratio / batch.rejected_length
    torch.testing.assert_close(loss("ipo", batch), (normalised - 5.0) ** 2)


def test_sigmoid_loss_falls_as_the_margin_grows() -> None:
    batch = pairs()
    wider = PreferenceBatch(batch.chosen_log_prob + 1, batch.rejected_log_prob, batch.ref_chosen_log_prob,
                            batch.ref_rejected_log_prob)
    assert (loss("sigmoid", wider) < loss("sigmoid", batch)).all()


def test_ipo_requires_lengths() -> None:
    with pytest.raises(BatchError, match="pass chosen_length and rejected_length"):
        loss("ipo", pairs())


def test_bad_pair_tensors_are_named() -> None:
    good = torch.zeros(3)
    with pytest.raises(BatchError, match=r"rejected_log_prob has shape \(4,\)"):
        PreferenceBatch(good, torch.zeros(4), good, good)
    with pytest.raises(BatchError, match="ref_chosen_log_prob holds a non-finite value"):
        PreferenceBatch(good, good, torch.tensor([0.0, float("nan"), 0.0]), good)
