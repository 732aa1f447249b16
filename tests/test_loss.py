"""The composed loss: weights, masks, metrics, the empty self-distillation mask event."""

import warnings

import pytest
import torch
from batches import random_policy_tensors

from composer_core import (
    BatchError,
    ComposerConfig,
    ComposerLoss,
    ConfigError,
    DistillInputs,
    EmptyDistillMaskWarning,
    Normaliser,
    PolicyInputs,
    PreferenceBatch,
)
from composer_core.distill import distill_per_token
from composer_core.objectives.aggregation import aggregate
from composer_core.objectives.base import PolicyBatch
from composer_core.objectives.surrogates import ClipParams, ppo_clip
from composer_core.plugins import registries

VOCAB = 11


def distill_inputs(mask: torch.Tensor, seed: int = 0) -> DistillInputs:
    generator = torch.Generator().manual_seed(seed)
    shape = (*mask.shape, VOCAB)
    student = torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
    return DistillInputs(student, torch.randn(*shape, generator=generator, dtype=torch.float64), mask,
                         response_mask=torch.ones_like(mask))


def preference_batch() -> PreferenceBatch:
    generator = torch.Generator().manual_seed(5)
    return PreferenceBatch(*(torch.randn(4, generator=generator, dtype=torch.float64) for _ in range(4)))


def composer(**sections: dict) -> ComposerLoss:
    return ComposerLoss(ComposerConfig.from_mapping(sections))


def policy_inputs(tensors: dict[str, torch.Tensor]) -> PolicyInputs:
    return PolicyInputs(tensors["log_prob"], tensors["advantages"], tensors["mask"],
                        old_log_prob=tensors["old_log_prob"])


def test_default_is_dr_grpo_policy_only(policy_tensors: dict[str, torch.Tensor]) -> None:
    out = ComposerLoss()(policy=policy_inputs(policy_tensors))
    batch = PolicyBatch(policy_tensors["log_prob"], policy_tensors["old_log_prob"], policy_tensors["advantages"],
                        policy_tensors["mask"])
    expected = aggregate(ppo_clip(batch, ClipParams()).loss, batch.mask, "seq-mean-token-sum-norm")
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["policy/tokens"] == float(batch.mask.sum())
    assert 0 <= out.metrics["policy/clipfrac"] <= 1


def test_channels_are_weighted_and_summed(policy_tensors: dict[str, torch.Tensor]) -> None:
    sections = {"distill": {"weight": 0.3, "support": "full"}, "preference": {"weight": 0.2, "beta": 0.5}}
    loss = composer(**sections)
    distill = distill_inputs(policy_tensors["mask"])
    out = loss(policy=policy_inputs(policy_tensors), distill=distill, preference=preference_batch())
    expected = (out.metrics["policy/loss"] + 0.3 * out.metrics["distill/loss"]
                + 0.2 * out.metrics["preference/loss"])
    assert out.loss.item() == pytest.approx(expected)
    assert out.metrics["loss/total"] == pytest.approx(expected)
    mask = policy_tensors["mask"]
    per_token = distill_per_token(distill.student_logits, distill.teacher_logits)
    assert out.metrics["distill/loss"] == pytest.approx((per_token * mask).sum().item() / mask.sum().item())
    assert out.metrics["distill/coverage"] == pytest.approx(mask.sum().item() / mask.numel())
    out.loss.backward()
    assert distill.student_logits.grad is not None


def test_distill_mask_selects_the_targeted_tokens() -> None:
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 2:] = True
    loss = composer(policy={"weight": 0.0}, distill={"weight": 1.0, "support": "full", "is_clip": None})
    inputs = distill_inputs(mask)
    out = loss(distill=inputs)
    per_token = distill_per_token(inputs.student_logits, inputs.teacher_logits)
    assert out.loss.item() == pytest.approx(per_token[1, 2:].mean().item())
    out.loss.backward()
    assert inputs.student_logits.grad[0].abs().sum() == 0  # untargeted rows get no gradient
    assert out.metrics["distill/rows_targeted"] == 1.0


def test_empty_distill_mask_is_reported_not_silent(policy_tensors: dict[str, torch.Tensor]) -> None:
    loss = composer(distill={"weight": 1.0})
    empty = torch.zeros_like(policy_tensors["mask"])
    with pytest.warns(EmptyDistillMaskWarning, match="empty SD mask"):
        out = loss(policy=policy_inputs(policy_tensors), distill=distill_inputs(empty))
    assert out.metrics["distill/empty_mask"] == 1.0
    assert out.metrics["distill/coverage"] == 0.0
    assert out.metrics["distill/empty_mask_events"] == 1.0
    out.loss.backward()  # the zero term stays connected to the graph (no rank skips a collective)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only; later events are counted
        again = loss(policy=policy_inputs(policy_tensors), distill=distill_inputs(empty))
    assert again.metrics["distill/empty_mask_events"] == 2.0


def test_distill_importance_correction_uses_the_sampled_tokens(policy_tensors: dict[str, torch.Tensor]) -> None:
    mask = policy_tensors["mask"]
    inputs = distill_inputs(mask)
    ids = torch.randint(0, VOCAB, mask.shape, generator=torch.Generator().manual_seed(1))
    scored = inputs.student_logits.detach().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    old = scored - 1.5  # ratio e^1.5 > is_clip 2: every weight is capped
    loss = composer(policy={"weight": 0.0}, distill={"weight": 1.0, "support": "full", "is_clip": 2.0})
    corrected = loss(distill=DistillInputs(inputs.student_logits, inputs.teacher_logits, mask, token_ids=ids,
                                           old_log_prob=old))
    plain = loss(distill=inputs)
    assert corrected.loss.item() == pytest.approx(2.0 * plain.loss.item())
    assert corrected.metrics["distill/is_weight_mean"] == pytest.approx(2.0)


def test_kl_in_the_loss_adds_beta_times_k3(policy_tensors: dict[str, torch.Tensor]) -> None:
    ref = policy_tensors["old_log_prob"] - 0.1
    inputs = PolicyInputs(policy_tensors["log_prob"], policy_tensors["advantages"], policy_tensors["mask"],
                          old_log_prob=policy_tensors["old_log_prob"], ref_log_prob=ref)
    base = composer(policy={"objective": {"name": "bnpo"}})(policy=inputs)
    with_kl = composer(policy={"objective": {"name": "bnpo"}, "kl": {"coef": 0.5}})(policy=inputs)
    assert with_kl.loss.item() == pytest.approx(base.loss.item() + 0.5 * with_kl.metrics["policy/kl"])
    missing_ref = PolicyInputs(inputs.log_prob, inputs.advantages, inputs.mask)
    with pytest.raises(BatchError, match="needs ref_log_prob"):
        composer(policy={"kl": {"coef": 0.5}})(policy=missing_ref)


def test_global_and_local_normaliser_scopes(policy_tensors: dict[str, torch.Tensor]) -> None:
    inputs = policy_inputs(policy_tensors)
    norm = Normaliser(num_tokens=1000)
    dapo = composer(policy={"objective": {"name": "dapo"}})
    bnpo = composer(policy={"objective": {"name": "bnpo", "params": {"clip_ratio_high": 0.28}}})
    tokens = policy_tensors["mask"].sum().item()
    assert dapo(policy=inputs, normaliser=norm).loss.item() == pytest.approx(
        bnpo(policy=inputs, normaliser=norm).loss.item() * tokens / 1000)


def test_sequence_advantages_are_broadcast(policy_tensors: dict[str, torch.Tensor]) -> None:
    per_token = policy_inputs(policy_tensors)
    per_sequence = PolicyInputs(per_token.log_prob, policy_tensors["advantages"][:, 0], per_token.mask,
                                old_log_prob=per_token.old_log_prob)
    torch.testing.assert_close(ComposerLoss()(policy=per_sequence).loss, ComposerLoss()(policy=per_token).loss)


def test_channel_inputs_must_match_the_enabled_channels(policy_tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ConfigError, match=r"distill channel is on .* but no distill inputs"):
        composer(distill={"weight": 1.0})(policy=policy_inputs(policy_tensors))
    with pytest.raises(ConfigError, match="preference inputs were given but the preference channel is off"):
        ComposerLoss()(policy=policy_inputs(policy_tensors), preference=preference_batch())
    with pytest.raises(ConfigError, match="every channel is off"):
        composer(policy={"weight": 0.0})()


def test_preference_metrics() -> None:
    loss = composer(policy={"weight": 0.0}, preference={"weight": 1.0, "beta": 0.1})
    batch = preference_batch()
    out = loss(preference=batch)
    assert out.metrics["preference/pairs"] == 4.0
    assert out.metrics["preference/accuracy"] == pytest.approx((batch.delta > 0).double().mean().item())


def test_every_builtin_objective_runs_through_the_composition() -> None:
    tensors = random_policy_tensors(seed=4)
    for name in registries().objectives.names():
        out = composer(policy={"objective": {"name": name}})(policy=policy_inputs(tensors))
        assert torch.isfinite(out.loss), name
        (grad,) = torch.autograd.grad(out.loss, tensors["log_prob"])
        assert grad[tensors["mask"]].abs().sum() > 0, name
        assert grad[~tensors["mask"]].abs().sum() == 0, name


# ---- padding may hold anything: NaN / Inf outside a channel's mask reaches neither the loss nor a gradient ----

def outside(mask: torch.Tensor, values: torch.Tensor, fill: float) -> torch.Tensor:
    """`values` with `fill` at every position outside `mask` (broadcast over a trailing vocabulary)."""
    where = mask.reshape(*mask.shape, *([1] * (values.dim() - mask.dim())))
    return torch.where(where, values, torch.full((), fill, dtype=values.dtype))


def policy_loss_and_grad(name: str, tensors: dict[str, torch.Tensor], fill: float, kl: bool
                         ) -> tuple[float, torch.Tensor]:
    mask = tensors["mask"]
    log_prob = outside(mask, tensors["log_prob"].detach(), fill).requires_grad_()
    sections = {"objective": {"name": name}, **({"kl": {"coef": 0.1}} if kl else {})}
    inputs = PolicyInputs(log_prob, outside(mask, tensors["advantages"], fill), mask,
                          old_log_prob=outside(mask, tensors["old_log_prob"], fill),
                          ref_log_prob=outside(mask, tensors["old_log_prob"] - 0.1, fill) if kl else None,
                          rollout_weights=outside(mask, torch.full_like(log_prob, 0.9).detach(), fill))
    out = composer(policy=sections)(policy=inputs)
    (grad,) = torch.autograd.grad(out.loss, log_prob)
    return out.loss.item(), grad


@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_policy_padding_changes_nothing_for_every_objective(fill: float, kl: bool) -> None:
    tensors = random_policy_tensors(seed=8)
    for name in registries().objectives.names():
        clean_loss, clean_grad = policy_loss_and_grad(name, tensors, 0.0, kl)
        dirty_loss, dirty_grad = policy_loss_and_grad(name, tensors, fill, kl)
        assert torch.isfinite(dirty_grad).all(), name
        assert dirty_loss == pytest.approx(clean_loss), name
        torch.testing.assert_close(dirty_grad, clean_grad, msg=name)


@pytest.mark.parametrize("support", ["full", "student_topk", "teacher_topk", "sampled_token"])
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_distill_padding_changes_nothing(support: str, fill: float) -> None:
    mask = random_policy_tensors(seed=2)["mask"]
    mask[:, 0] = False  # a prompt-side position: never targeted
    base = distill_inputs(mask, seed=3)
    ids = torch.randint(0, VOCAB, mask.shape, generator=torch.Generator().manual_seed(4))
    old = base.student_logits.detach().log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) - 0.3
    loss = composer(policy={"weight": 0.0}, distill={"weight": 1.0, "support": support, "top_k": 4,
                                                     "alpha": 1.0 if support == "sampled_token" else 0.5})

    def run(value: float) -> tuple[float, torch.Tensor]:
        student = outside(mask, base.student_logits.detach(), value).requires_grad_()
        out = loss(distill=DistillInputs(student, outside(mask, base.teacher_logits, value), mask,
                                         token_ids=torch.where(mask, ids, -1 if value != 0 else 0),
                                         old_log_prob=outside(mask, old, value)))
        return out.loss.item(), torch.autograd.grad(out.loss, student)[0]

    clean_loss, clean_grad = run(0.0)
    dirty_loss, dirty_grad = run(fill)
    assert torch.isfinite(dirty_grad).all()
    assert dirty_loss == pytest.approx(clean_loss)
    torch.testing.assert_close(dirty_grad, clean_grad)
