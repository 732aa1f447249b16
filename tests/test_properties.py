"""Invariants checked on generated inputs (hypothesis)."""

import torch
from batches import random_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from composer_core import ComposerConfig, ComposerLoss, Normaliser, PolicyInputs
from composer_core.distill import distill_per_token
from composer_core.objectives.advantages import make_inputs
from composer_core.objectives.aggregation import AGGREGATION_MODES
from composer_core.plugins import registries

OBJECTIVES = registries().objectives.names()
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)


def generated_policy(seed: int, batch: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=generator, dtype=torch.float64) * 3
    return {"old": old, "log_prob": old + 0.4 * torch.randn(batch, length, generator=generator, dtype=torch.float64),
            "advantages": torch.randn(batch, generator=generator, dtype=torch.float64),
            "mask": random_mask(batch, length, generator)}


def loss_of(objective: str, mode: str, tensors: dict[str, torch.Tensor], normaliser: Normaliser | None = None,
            rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """The composed policy loss on some rows (global normaliser scope), and its gradient w.r.t. all of log_prob."""
    log_prob = tensors["log_prob"].clone().requires_grad_()
    settings = {"name": objective, "aggregation": mode, "normaliser": "global"}
    config = ComposerConfig.from_mapping({"policy": {"objective": settings}})
    inputs = PolicyInputs(log_prob[rows], tensors["advantages"][rows], tensors["mask"][rows],
                          old_log_prob=tensors["old"][rows])
    value = ComposerLoss(config)(policy=inputs, normaliser=normaliser).loss
    (grad,) = torch.autograd.grad(value, log_prob)
    return value.detach(), grad


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 10_000), batch=st.integers(2, 6), length=st.integers(1, 7),
       objective=st.sampled_from(OBJECTIVES), mode=st.sampled_from(AGGREGATION_MODES), split=st.integers(1, 5))
def test_chunks_with_a_global_normaliser_sum_to_the_whole(seed: int, batch: int, length: int, objective: str,
                                                          mode: str, split: int) -> None:
    tensors = generated_policy(seed, batch, length)
    mask = tensors["mask"]
    split = min(split, batch - 1)
    norm = Normaliser(num_tokens=float(mask.sum()), num_sequences=float(mask.any(-1).sum()), max_length=length)
    whole, whole_grad = loss_of(objective, mode, tensors, norm)
    first, first_grad = loss_of(objective, mode, tensors, norm, slice(0, split))
    second, second_grad = loss_of(objective, mode, tensors, norm, slice(split, None))
    torch.testing.assert_close(first + second, whole)
    torch.testing.assert_close(first_grad + second_grad, whole_grad)


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 10_000), objective=st.sampled_from(OBJECTIVES), mode=st.sampled_from(AGGREGATION_MODES))
def test_values_outside_the_mask_change_nothing(seed: int, objective: str, mode: str) -> None:
    tensors = generated_policy(seed, 4, 6)
    outside = ~tensors["mask"]
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 5
    scrambled = {**tensors, "log_prob": torch.where(outside, noise, tensors["log_prob"]),
                 "old": torch.where(outside, -noise.abs(), tensors["old"])}
    value, grad = loss_of(objective, mode, tensors)
    scrambled_value, scrambled_grad = loss_of(objective, mode, scrambled)
    torch.testing.assert_close(value, scrambled_value)
    torch.testing.assert_close(grad, scrambled_grad)
    assert grad[outside].eq(0).all()


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 10_000), objective=st.sampled_from(OBJECTIVES),
       estimator=st.sampled_from(["grpo", "dr_grpo", "rloo", "batch_norm"]))
def test_groups_without_reward_spread_get_no_gradient(seed: int, objective: str, estimator: str) -> None:
    tensors = generated_policy(seed, 6, 5)
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5], dtype=torch.float64)  # group 0 has no spread
    groups = [0, 0, 0, 1, 1, 1]
    found = registries().advantage_estimators.get(estimator)
    advantages = found.fn(make_inputs(rewards, tensors["mask"], groups), found.make_params())
    assert advantages[:3].eq(0).all()
    log_prob = tensors["log_prob"].clone().requires_grad_()
    config = ComposerConfig.from_mapping({"policy": {"objective": {"name": objective}}})
    inputs = PolicyInputs(log_prob, advantages, tensors["mask"])  # on-policy: nothing clipped
    (grad,) = torch.autograd.grad(ComposerLoss(config)(policy=inputs).loss, log_prob)
    assert grad[:3].eq(0).all()
    assert grad[3:].abs().sum() > 0


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 40), scale=st.floats(0.1, 8.0))
def test_alpha_endpoints_are_the_two_kls_and_jsd_lies_between_zero_and_log2(seed: int, vocab: int,
                                                                             scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(3, vocab, generator=generator, dtype=torch.float64) * scale
    teacher = torch.randn(3, vocab, generator=generator, dtype=torch.float64) * scale
    log_p, log_q = student.log_softmax(-1), teacher.log_softmax(-1)
    forward = (log_q.exp() * (log_q - log_p)).sum(-1)
    reverse = (log_p.exp() * (log_p - log_q)).sum(-1)
    torch.testing.assert_close(distill_per_token(student, teacher, alpha=0.0), forward)
    torch.testing.assert_close(distill_per_token(student, teacher, alpha=1.0), reverse)
    jsd = distill_per_token(student, teacher, alpha=0.5)
    assert (jsd >= -1e-12).all() and (jsd <= torch.log(torch.tensor(2.0)) + 1e-9).all()


@PROPERTY_SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), alpha=st.floats(0.0, 1.0))
def test_topk_with_tail_bucket_is_a_proper_divergence(seed: int, k: int, alpha: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 12, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(2, 12, generator=generator, dtype=torch.float64) * 3
    value = distill_per_token(student, teacher, support="student_topk", top_k=k, alpha=alpha)
    assert torch.isfinite(value).all() and (value >= -1e-9).all()
    same = distill_per_token(student, student.clone(), support="student_topk", top_k=k, alpha=alpha)
    torch.testing.assert_close(same, torch.zeros_like(same))
