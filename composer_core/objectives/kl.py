"""KL(pi || ref) estimators per token and their two placements: in the loss, or in the reward.

With `d = log ref - log pi` on the sampled token: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1.
verl clamps k3 (d to [-20, 20], the value to [-10, 10]); TRL does not: both are settings here.
`straight_through` keeps the estimator's value but takes k2's gradient (verl's "k1+" / "k3+").
"""

from __future__ import annotations

from typing import Literal

import torch

from composer_core.errors import ConfigError

KLEstimator = Literal["k1", "k2", "k3", "abs"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "abs")


def kl_estimate(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, estimator: str, *,
                straight_through: bool = False, clamp: float | None = None,
                log_ratio_clamp: float | None = None) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from sampled-token log-probs (any matching shape)."""
    diff = ref_log_prob - log_prob
    if estimator == "k1":
        value = -diff
    elif estimator == "k2":
        value = 0.5 * diff.square()
    elif estimator == "k3":
        bounded = diff if log_ratio_clamp is None else diff.clamp(-log_ratio_clamp, log_ratio_clamp)
        value = bounded.exp() - bounded - 1
    elif estimator == "abs":
        value = diff.abs()
    else:
        raise ConfigError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    if clamp is not None:
        value = value.clamp(-clamp, clamp)
    if straight_through and estimator != "k2":
        surrogate = 0.5 * diff.square()
        value = surrogate - surrogate.detach() + value.detach()
    return value


def kl_penalised_rewards(token_rewards: torch.Tensor, log_prob: torch.Tensor, ref_log_prob: torch.Tensor,
                         mask: torch.Tensor, coef: float, estimator: str = "k1", *, clamp: float | None = None,
                         log_ratio_clamp: float | None = None) -> torch.Tensor:
    """KL in the reward: `r_t - coef * KL_t` on masked tokens (verl `use_kl_in_reward`, k1 by default).

    Uses the behaviour policy's log-probs, so no gradient flows; call it before the advantage estimator.
    clamp / log_ratio_clamp as in `kl_estimate` (verl applies its k3 clamps in the reward too).
    """
    with torch.no_grad():
        penalty = kl_estimate(log_prob, ref_log_prob, estimator, clamp=clamp, log_ratio_clamp=log_ratio_clamp)
    return token_rewards - coef * torch.where(mask, penalty, 0.0)
