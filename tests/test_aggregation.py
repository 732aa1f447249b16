"""Aggregation modes and normalisers."""

import pytest
import torch

from composer_core.errors import ConfigError
from composer_core.objectives.aggregation import AGGREGATION_MODES, Normaliser, aggregate, masked_sum

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [7.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(("mode", "expected"), [
    ("token-mean", 28 / 7),
    ("token-sum", 28.0),
    ("seq-mean-token-mean", (10 / 4 + 11 / 2 + 7 / 1) / 3),
    ("seq-mean-token-sum", (10 + 11 + 7) / 3),
    ("seq-mean-token-sum-norm", (10 + 11 + 7) / 3 / 4),
])
def test_modes_on_a_worked_example(mode: str, expected: float) -> None:
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(expected)


def test_global_counts_replace_local_ones() -> None:
    norm = Normaliser(num_tokens=14, num_sequences=6, max_length=8, scale=2.0)
    assert aggregate(LOSS, MASK, "token-mean", norm).item() == pytest.approx(28 / 14 * 2)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm).item() == pytest.approx(28 / 6 / 8 * 2)


def test_local_keeps_length_and_scale_but_drops_counts() -> None:
    local = Normaliser(num_tokens=100, num_sequences=100, max_length=8, scale=0.5).local()
    assert local == Normaliser(max_length=8, scale=0.5)


def test_values_outside_the_mask_are_never_read() -> None:
    poisoned = LOSS.masked_fill(~MASK, float("nan"))
    for mode in AGGREGATION_MODES:
        assert torch.isfinite(aggregate(poisoned, MASK, mode)), mode
    assert masked_sum(poisoned, MASK).item() == 28.0


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown aggregation mode 'mean'.*token-mean"):
        aggregate(LOSS, MASK, "mean")
