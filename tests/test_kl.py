"""KL estimators: definitions, unbiasedness, straight-through gradients."""

import pytest
import torch

from composer_core.errors import ConfigError
from composer_core.objectives.kl import kl_estimate


def test_definitions() -> None:
    log_prob = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    d = ref - log_prob
    torch.testing.assert_close(kl_estimate(log_prob, ref, "k1"), -d)
    torch.testing.assert_close(kl_estimate(log_prob, ref, "k2"), d**2 / 2)
    torch.testing.assert_close(kl_estimate(log_prob, ref, "k3"), d.exp() - d - 1)
    torch.testing.assert_close(kl_estimate(log_prob, ref, "abs"), d.abs())


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_match_the_exact_kl(estimator: str) -> None:
    generator = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(8, generator=generator, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(8, generator=generator, dtype=torch.float64), 0)
    exact = (p * (p.log() - q.log())).sum()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=generator)
    estimate = kl_estimate(p.log()[samples], q.log()[samples], estimator).mean()
    assert estimate.item() == pytest.approx(exact.item(), abs=0.01)


def test_k3_clamps_are_optional() -> None:
    log_prob, ref = torch.tensor([0.0]), torch.tensor([30.0])
    assert kl_estimate(log_prob, ref, "k3").item() > 1e12
    assert kl_estimate(log_prob, ref, "k3", clamp=10.0, log_ratio_clamp=20.0).item() == 10.0


def test_straight_through_keeps_value_takes_k2_gradient() -> None:
    log_prob = torch.tensor([-1.0, -0.2], requires_grad=True)
    ref = torch.tensor([-0.5, -1.0])
    value = kl_estimate(log_prob, ref, "k3", straight_through=True)
    torch.testing.assert_close(value, kl_estimate(log_prob, ref, "k3"))
    (grad,) = torch.autograd.grad(value.sum(), log_prob)
    torch.testing.assert_close(grad, (log_prob - ref).detach())


def test_unknown_estimator() -> None:
    with pytest.raises(ConfigError, match=r"unknown KL estimator 'k4'.*k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")
