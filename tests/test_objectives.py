"""Channel-1 surrogates against their formulas, written out independently here."""

import pytest
import torch

from composer_core.objectives.base import PolicyBatch
from composer_core.objectives.surrogates import (
    CISPOParams,
    ClipParams,
    NoParams,
    SAPOParams,
    SequenceClipParams,
    cispo,
    gspo,
    ppo_clip,
    reinforce,
    sapo,
)
from composer_core.plugins import registries


def batch_of(tensors: dict[str, torch.Tensor]) -> PolicyBatch:
    return PolicyBatch(tensors["log_prob"], tensors["old_log_prob"], tensors["advantages"], tensors["mask"])


def test_ppo_clip_matches_the_textbook_formula(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of(policy_tensors)
    ratio = (batch.log_prob - batch.old_log_prob).exp()
    a = batch.advantages
    expected = -torch.min(ratio * a, ratio.clamp(0.8, 1.28) * a)
    result = ppo_clip(batch, ClipParams(clip_ratio_high=0.28))
    torch.testing.assert_close(result.loss, expected)
    assert 0 < result.stats["clipfrac"][batch.mask].mean() < 1, "inputs must exercise the clip"


def test_dual_clip_bounds_negative_advantages_only(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of({**policy_tensors, "log_prob": policy_tensors["old_log_prob"] + 2.0})  # ratio e^2 > c
    plain = ppo_clip(batch, ClipParams()).loss
    dual = ppo_clip(batch, ClipParams(dual_clip_c=3.0))
    negative = batch.advantages < 0
    torch.testing.assert_close(dual.loss[negative], (-batch.advantages * 3.0)[negative])
    torch.testing.assert_close(dual.loss[~negative], plain[~negative])
    assert dual.stats["clipfrac_lower"][negative].all()


def test_gspo_uses_one_ratio_per_sequence(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of(policy_tensors)
    mask = batch.mask
    seq_log_ratio = ((batch.log_prob - batch.old_log_prob) * mask).sum(-1) / mask.sum(-1)
    ratio = seq_log_ratio.exp().unsqueeze(-1)
    a = batch.advantages
    expected = -torch.min(ratio * a, ratio.clamp(1 - 3e-4, 1 + 4e-4) * a)
    result = gspo(batch, SequenceClipParams())
    torch.testing.assert_close(torch.where(mask, result.loss, 0), torch.where(mask, expected, 0))


def test_gspo_gradient_is_the_sequence_objective_gradient(policy_tensors: dict[str, torch.Tensor]) -> None:
    """Token form and sequence form (TRL's importance_sampling_level='sequence') share value and gradient."""
    params = SequenceClipParams(clip_ratio_low=0.5, clip_ratio_high=0.5)  # wide: both forms stay unclipped
    batch = batch_of(policy_tensors)
    mask = batch.mask
    token_total = (gspo(batch, params).loss * mask).sum()
    (token_grad,) = torch.autograd.grad(token_total, batch.log_prob)
    seq_ratio = (((batch.log_prob - batch.old_log_prob) * mask).sum(-1) / mask.sum(-1)).exp()
    seq_total = (-(seq_ratio * batch.advantages[:, 0]) * mask.sum(-1)).sum()
    (seq_grad,) = torch.autograd.grad(seq_total, batch.log_prob)
    torch.testing.assert_close(token_grad, seq_grad)


def test_cispo_weight_is_stopped_and_capped(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of(policy_tensors)
    params = CISPOParams(clip_ratio_high=0.1)
    loss = cispo(batch, params).loss
    weight = (batch.log_prob - batch.old_log_prob).exp().clamp(max=1.1).detach()
    torch.testing.assert_close(loss, -weight * batch.advantages * batch.log_prob)
    (grad,) = torch.autograd.grad(loss.sum(), batch.log_prob)
    torch.testing.assert_close(grad, -weight * batch.advantages)


def test_cispo_lower_clip_is_optional(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of({**policy_tensors, "log_prob": policy_tensors["old_log_prob"] - 1.0})  # ratio e^-1
    upper_only = cispo(batch, CISPOParams()).loss
    both = cispo(batch, CISPOParams(lower_clip=True, clip_ratio_low=0.2)).loss
    torch.testing.assert_close(both / upper_only, torch.full_like(both, 0.8 / torch.e ** -1))


def test_sapo_gate(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of(policy_tensors)
    ratio = (batch.log_prob - batch.old_log_prob).exp()
    tau = torch.where(batch.advantages > 0, 1.0, 1.05).double()
    expected = -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * batch.advantages
    torch.testing.assert_close(sapo(batch, SAPOParams()).loss, expected)


def test_reinforce(policy_tensors: dict[str, torch.Tensor]) -> None:
    batch = batch_of(policy_tensors)
    torch.testing.assert_close(reinforce(batch, NoParams()).loss, -batch.advantages * batch.log_prob)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "bnpo", "dapo", "gspo", "cispo", "sapo", "ppo", "reinforce"])
def test_on_policy_gradient_is_the_policy_gradient(name: str, policy_tensors: dict[str, torch.Tensor]) -> None:
    """At ratio 1 every built-in objective's per-token gradient is -A (nothing is clipped on-policy)."""
    objective = registries().objectives.get(name)
    log_prob = policy_tensors["old_log_prob"].clone().requires_grad_()
    batch = PolicyBatch(log_prob, log_prob.detach(), policy_tensors["advantages"], policy_tensors["mask"])
    loss = objective.per_token(batch, objective.make_params()).loss
    (grad,) = torch.autograd.grad(loss.sum(), log_prob)
    torch.testing.assert_close(grad, -policy_tensors["advantages"])


def test_objective_defaults_are_applied_and_overridable() -> None:
    dapo = registries().objectives.get("dapo")
    assert dapo.make_params().clip_ratio_high == 0.28
    assert dapo.make_params({"clip_ratio_high": 0.3}).clip_ratio_high == 0.3
    assert registries().objectives.get("ppo").make_params().dual_clip_c == 3.0
