"""Self-distillation divergences: directions, supports, temperature, clipping, chunking."""

import pytest
import torch

from composer_core.distill import (
    add_tail_bucket,
    distill_per_token,
    distill_per_token_from_hidden,
    distill_per_token_precomputed,
    generalized_jsd_terms,
    importance_weight,
    teacher_topk,
    token_log_probs,
)
from composer_core.errors import BatchError, ConfigError


def logits(seed: int, shape: tuple[int, ...] = (2, 3, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def test_alpha_zero_is_forward_kl_and_one_is_reverse_kl() -> None:
    student, teacher = logits(0), logits(1)
    log_p, log_q = student.log_softmax(-1), teacher.log_softmax(-1)
    torch.testing.assert_close(distill_per_token(student, teacher, alpha=0.0), exact_kl(log_q, log_p))
    torch.testing.assert_close(distill_per_token(student, teacher, alpha=1.0), exact_kl(log_p, log_q))


def test_alpha_half_is_the_symmetric_jsd() -> None:
    student, teacher = logits(0), logits(1)
    p, q = student.softmax(-1), teacher.softmax(-1)
    m = (p + q) / 2
    expected = 0.5 * exact_kl(p.log(), m.log()) + 0.5 * exact_kl(q.log(), m.log())
    torch.testing.assert_close(distill_per_token(student, teacher, alpha=0.5), expected)


def test_divergence_is_zero_for_identical_distributions() -> None:
    student = logits(0)
    for alpha in (0.0, 0.3, 1.0):
        torch.testing.assert_close(distill_per_token(student, student.clone(), alpha=alpha),
                                   torch.zeros(2, 3, dtype=torch.float64))


def test_teacher_never_receives_gradient() -> None:
    student = logits(0).requires_grad_()
    teacher = logits(1).requires_grad_()
    distill_per_token(student, teacher, alpha=0.5).sum().backward()
    assert student.grad is not None and teacher.grad is None


def test_temperature_divides_both_logits() -> None:
    student, teacher = logits(0), logits(1)
    torch.testing.assert_close(distill_per_token(student, teacher, temperature=2.0),
                               distill_per_token(student / 2, teacher / 2))


def test_tail_bucket_completes_the_distribution() -> None:
    log_probs = logits(0).log_softmax(-1).topk(3, dim=-1).values
    with_tail = add_tail_bucket(log_probs)
    torch.testing.assert_close(with_tail.exp().sum(-1), torch.ones(2, 3, dtype=torch.float64))


def test_full_topk_with_tail_equals_the_full_divergence() -> None:
    """With K = vocabulary the tail is empty: the top-K divergence is the full one."""
    student, teacher = logits(0), logits(1)
    full = distill_per_token(student, teacher, support="full")
    topk = distill_per_token(student, teacher, support="student_topk", top_k=7, tail="renormalise")
    torch.testing.assert_close(topk, full)


def test_teacher_topk_picks_the_teacher_support() -> None:
    student, teacher = logits(0), logits(1)
    by_teacher = distill_per_token(student, teacher, support="teacher_topk", top_k=2, tail="renormalise", alpha=0.0)
    indices = teacher.topk(2, dim=-1).indices
    log_p = student.log_softmax(-1).gather(-1, indices).log_softmax(-1)
    log_q = teacher.log_softmax(-1).gather(-1, indices).log_softmax(-1)
    torch.testing.assert_close(by_teacher, exact_kl(log_q, log_p))


def test_sampled_token_is_a_reverse_kl_reinforce_estimator() -> None:
    student, teacher = logits(0).requires_grad_(), logits(1)
    ids = torch.randint(0, 7, (2, 3), generator=torch.Generator().manual_seed(2))
    loss = distill_per_token(student, teacher, support="sampled_token", alpha=1.0, token_ids=ids)
    log_p = student.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    log_q = teacher.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(loss, (log_p - log_q).detach() * log_p)
    with pytest.raises(ConfigError, match=r"reverse KL only: set alpha=1.0"):
        distill_per_token(student, teacher, support="sampled_token", alpha=0.5, token_ids=ids)
    with pytest.raises(BatchError, match="needs token_ids"):
        distill_per_token(student, teacher, support="sampled_token", alpha=1.0)


def test_pointwise_clip_bounds_every_term() -> None:
    student, teacher = logits(0) * 4, logits(1) * 4
    clipped = distill_per_token(student, teacher, alpha=1.0, pointwise_clip=0.05)
    terms = generalized_jsd_terms(student.log_softmax(-1), teacher.log_softmax(-1), 1.0)
    torch.testing.assert_close(clipped, terms.clamp(max=0.05).sum(-1))
    assert (clipped < distill_per_token(student, teacher, alpha=1.0)).any()


def test_importance_weight_caps_from_above_only() -> None:
    log_prob = torch.tensor([0.0, 0.0, 0.0])
    old = torch.tensor([0.0, 2.0, -2.0])
    torch.testing.assert_close(importance_weight(log_prob, old, 2.0), torch.tensor([1.0, torch.e**-2, 2.0]))


@pytest.mark.parametrize("support", ["full", "student_topk", "sampled_token"])
def test_chunked_from_hidden_states_equals_materialised_logits(support: str) -> None:
    generator = torch.Generator().manual_seed(3)
    student_hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher_hidden = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    head = torch.randn(9, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 9, (2, 5), generator=generator)
    alpha = 1.0 if support == "sampled_token" else 0.5
    options = {"support": support, "alpha": alpha, "top_k": 3, "token_ids": ids}
    chunked = distill_per_token_from_hidden(student_hidden, teacher_hidden, head, chunk_size=3, **options)
    whole = distill_per_token(student_hidden @ head.T, teacher_hidden @ head.T, **options)
    torch.testing.assert_close(chunked, whole)
    chunked_grads = torch.autograd.grad(chunked.sum(), (student_hidden, head))
    whole_grads = torch.autograd.grad(whole.sum(), (student_hidden, head))
    for chunked_grad, whole_grad in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(chunked_grad, whole_grad)


def test_bad_distill_inputs_are_named() -> None:
    with pytest.raises(BatchError, match=r"teacher_logits has shape \(2, 3, 5\) but student_logits has"):
        distill_per_token(logits(0), logits(1, (2, 3, 5)))
    with pytest.raises(BatchError, match="student_logits must be a floating-point tensor"):
        distill_per_token(torch.ones(2, 3, 7, dtype=torch.long), logits(1))
    with pytest.raises(ConfigError, match="top_k must be in"):
        distill_per_token(logits(0), logits(1), support="student_topk", top_k=50)
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        distill_per_token(logits(0), logits(1), alpha=1.5)


# ---------------------------------------------------------------- a teacher precomputed as top-K tensors


@pytest.mark.parametrize("tail", ["bucket", "renormalise"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_topk_tensors_equal_the_full_teacher_logits(tail: str, temperature: float) -> None:
    """Shipping the teacher as (ids, log-probs) top-K gives the same loss and gradient as its full logits."""
    from composer_core.distill import distill_per_token_precomputed, teacher_topk

    gen = torch.Generator().manual_seed(3)
    student = torch.randn(3, 5, 40, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, 40, generator=gen, dtype=torch.float64)
    full = distill_per_token(student, teacher, support="teacher_topk", top_k=6, tail=tail, alpha=0.3,
                             temperature=temperature)
    ids, log_probs = teacher_topk(teacher, 6, temperature)
    shipped = distill_per_token_precomputed(student, ids, log_probs.double(), tail=tail, alpha=0.3,
                                                  temperature=temperature)
    torch.testing.assert_close(shipped, full)
    (grad_full,) = torch.autograd.grad(full.sum(), student)
    (grad_shipped,) = torch.autograd.grad(shipped.sum(), student)
    torch.testing.assert_close(grad_shipped, grad_full)
    assert bool(full.abs().sum() > 0)


def test_teacher_topk_sampled_token_equals_the_full_teacher_logits() -> None:
    from composer_core.distill import distill_per_token_precomputed, token_log_probs

    gen = torch.Generator().manual_seed(4)
    student = torch.randn(2, 4, 30, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2, 4, 30, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 30, (2, 4), generator=gen)
    full = distill_per_token(student, teacher, support="sampled_token", alpha=1.0, token_ids=tokens)
    shipped = distill_per_token_precomputed(student, tokens.unsqueeze(-1),
                                                  token_log_probs(teacher, tokens).unsqueeze(-1),
                                                  support="sampled_token")
    torch.testing.assert_close(shipped, full)


def test_student_topk_support_ids_equal_the_full_teacher_logits() -> None:
    """The student's top-K taken beforehand and the teacher's log-probs there give SDPO's student-top-K loss."""
    from composer_core.distill import distill_per_token_precomputed

    gen = torch.Generator().manual_seed(5)
    student = torch.randn(2, 4, 30, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2, 4, 30, generator=gen, dtype=torch.float64)
    full = distill_per_token(student, teacher, support="student_topk", top_k=5, alpha=0.5)
    ids = student.topk(5, dim=-1).indices
    shipped = distill_per_token_precomputed(student, ids, torch.log_softmax(teacher, -1).gather(-1, ids),
                                            support="student_topk", alpha=0.5)
    torch.testing.assert_close(shipped, full)


def test_precomputed_teacher_refuses_the_full_support() -> None:
    from composer_core.distill import distill_per_token_precomputed

    ids = torch.zeros(1, 2, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="full logits"):
        distill_per_token_precomputed(torch.randn(1, 2, 9), ids, torch.full((1, 2, 3), -2.0), support="full")


def test_teacher_topk_shape_mismatch_is_named() -> None:
    from composer_core.distill import distill_per_token_precomputed

    with pytest.raises(BatchError, match="support_ids"):
        distill_per_token_precomputed(torch.randn(1, 2, 9), torch.zeros(1, 3, 3, dtype=torch.long),
                                            torch.full((1, 3, 3), -2.0))


# ---- padding may hold anything: values outside the distillation mask never reach the loss or its gradients ----

SUPPORTS = [{"support": "full"}, {"support": "student_topk", "top_k": 3, "tail": "bucket"},
            {"support": "student_topk", "top_k": 3, "tail": "renormalise"},
            {"support": "student_topk", "top_k": 3, "tail": "none"}, {"support": "teacher_topk", "top_k": 3},
            {"support": "sampled_token", "alpha": 1.0}]
POISONS = (float("nan"), float("inf"), float("-inf"))


def poisoned(values: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """`values` with every position outside `mask` replaced by a random mix of NaN, +Inf and -Inf."""
    choice = torch.randint(0, len(POISONS), values.shape, generator=torch.Generator().manual_seed(seed))
    junk = torch.tensor(POISONS, dtype=values.dtype)[choice]
    outside = ~mask.reshape(*mask.shape, *([1] * (values.dim() - mask.dim())))
    return torch.where(outside, junk, values)


def zeroed(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    outside = ~mask.reshape(*mask.shape, *([1] * (values.dim() - mask.dim())))
    return torch.where(outside, torch.zeros((), dtype=values.dtype), values)


def random_mask(seed: int, shape: tuple[int, int] = (3, 5)) -> torch.Tensor:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask[0, 0] = True  # at least one targeted token
    return mask


def loss_and_grad(compute, student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    student = student.clone().requires_grad_()
    loss = compute(student)
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), grad


@pytest.mark.parametrize("options", SUPPORTS, ids=lambda options: "-".join(map(str, options.values())))
@pytest.mark.parametrize("seed", range(4))
def test_non_finite_logits_outside_the_mask_change_nothing(options: dict, seed: int) -> None:
    mask = random_mask(seed)
    student, teacher = logits(seed, (3, 5, 7)), logits(seed + 100, (3, 5, 7))
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(seed))
    options = {"alpha": 0.5, **options}

    def total(teacher_logits: torch.Tensor, token_ids: torch.Tensor):
        return lambda s: distill_per_token(s, teacher_logits, token_ids=token_ids, mask=mask, temperature=0.7,
                                           **options).sum()

    clean_loss, clean_grad = loss_and_grad(total(zeroed(teacher, mask), zeroed(ids, mask)), zeroed(student, mask))
    bad_ids = torch.where(mask, ids, -12345)  # padding ids outside the vocabulary
    dirty_loss, dirty_grad = loss_and_grad(total(poisoned(teacher, mask, seed + 1), bad_ids),
                                           poisoned(student, mask, seed))
    assert torch.isfinite(clean_loss) and torch.isfinite(dirty_grad).all()
    torch.testing.assert_close(dirty_loss, clean_loss)
    torch.testing.assert_close(dirty_grad, clean_grad)
    assert dirty_grad[~mask].abs().sum() == 0 and dirty_grad[mask].abs().sum() > 0


@pytest.mark.parametrize("options", SUPPORTS, ids=lambda options: "-".join(map(str, options.values())))
def test_the_masked_divergence_equals_the_unmasked_one_inside_the_mask(options: dict) -> None:
    mask = random_mask(7)
    student, teacher = logits(1, (3, 5, 7)), logits(2, (3, 5, 7))
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(3))
    options = {"alpha": 0.5, **options}
    masked = distill_per_token(student, teacher, token_ids=ids, mask=mask, **options)
    full = distill_per_token(student, teacher, token_ids=ids, **options)
    torch.testing.assert_close(masked[mask], full[mask])
    assert (masked[~mask] == 0).all()


@pytest.mark.parametrize("support", ["teacher_topk", "student_topk", "sampled_token"])
def test_precomputed_teacher_tensors_outside_the_mask_change_nothing(support: str) -> None:
    mask = random_mask(5)
    student, teacher = logits(3, (3, 5, 7)), logits(4, (3, 5, 7))
    if support == "sampled_token":
        ids = torch.randint(0, 7, (3, 5, 1), generator=torch.Generator().manual_seed(2))
        values = teacher.log_softmax(-1).gather(-1, ids)
    else:
        ids, values = teacher_topk(teacher, 3)
    alpha = 1.0 if support == "sampled_token" else 0.5

    def compute(support_ids: torch.Tensor, teacher_values: torch.Tensor):
        return lambda s: distill_per_token_precomputed(s, support_ids, teacher_values, support=support, alpha=alpha,
                                                       mask=mask).sum()

    clean = loss_and_grad(compute(ids, values), zeroed(student, mask))
    dirty = loss_and_grad(compute(torch.where(mask.unsqueeze(-1), ids, -1), poisoned(values, mask, 1)),
                          poisoned(student, mask, 2))
    assert torch.isfinite(dirty[1]).all()
    torch.testing.assert_close(dirty, clean)


def test_hidden_states_outside_the_mask_change_nothing() -> None:
    mask = random_mask(9)
    generator = torch.Generator().manual_seed(0)
    student, teacher = (torch.randn(3, 5, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    head = torch.randn(7, 4, generator=generator, dtype=torch.float64)

    def compute(teacher_hidden: torch.Tensor):
        return lambda s: distill_per_token_from_hidden(s, teacher_hidden, head, chunk_size=2, mask=mask,
                                                       support="full").sum()

    clean = loss_and_grad(compute(zeroed(teacher, mask)), zeroed(student, mask))
    dirty = loss_and_grad(compute(poisoned(teacher, mask, 1)), poisoned(student, mask, 2))
    assert torch.isfinite(dirty[1]).all()
    torch.testing.assert_close(dirty, clean)


def test_non_finite_logits_inside_the_mask_are_still_refused_by_the_loss() -> None:
    from composer_core import ComposerConfig, ComposerLoss, DistillInputs

    mask = random_mask(1)
    student = logits(0, (3, 5, 7))
    student[0, 0, 2] = float("nan")
    config = {"policy": {"weight": 0.0}, "distill": {"weight": 1.0, "support": "full"}}
    loss = ComposerLoss(ComposerConfig.from_mapping(config))
    with pytest.raises(BatchError, match=r"non-finite value .* position \(0, 0\)"):
        loss(distill=DistillInputs(student, logits(1, (3, 5, 7)), mask))


# ---- sampled-token log-probs: a row-chunked logsumexp, exact in value and gradient ----

def gather_minus_logsumexp(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The unchunked formula `token_log_probs` replaced (autograd through logsumexp)."""
    return values.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - values.logsumexp(dim=-1)


@pytest.mark.parametrize("chunk_elements", [1, 7 * 3, 7 * 4, 1 << 22])  # 1 row a chunk, 3 (even), 4 (uneven), all
def test_chunked_token_log_probs_equal_the_unchunked_formula(chunk_elements: int) -> None:
    student = (logits(40, (3, 5, 7)) * 4).requires_grad_()
    ids = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(41))
    upstream = logits(42, (3, 5))
    chunked = token_log_probs(student, ids, chunk_elements=chunk_elements)
    expected = gather_minus_logsumexp(student, ids)
    torch.testing.assert_close(chunked, expected, rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(chunked, student, upstream)
    (expected_grad,) = torch.autograd.grad(expected, student, upstream)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-14, atol=1e-14)


def test_token_log_probs_of_a_strided_view_and_its_shape_check() -> None:
    base = logits(43, (2, 6, 9)).requires_grad_()
    view = base[:, 1:, ::2]  # neither contiguous nor viewable as rows
    ids = torch.randint(0, 5, (2, 5), generator=torch.Generator().manual_seed(44))
    torch.testing.assert_close(token_log_probs(view, ids, chunk_elements=10), gather_minus_logsumexp(view, ids))
    (grad,) = torch.autograd.grad(token_log_probs(view, ids, chunk_elements=10).sum(), base)
    (expected,) = torch.autograd.grad(gather_minus_logsumexp(view, ids).sum(), base)
    torch.testing.assert_close(grad, expected)
    with pytest.raises(BatchError, match=r"token_ids has shape \(2, 4\)"):
        token_log_probs(view, ids[:, :4])


def test_sampled_token_loss_equals_the_unchunked_estimator() -> None:
    student = (logits(45, (2, 4, 11)) * 3).requires_grad_()
    teacher = logits(46, (2, 4, 11)) * 3
    ids = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(47))
    log_p, log_q = gather_minus_logsumexp(student, ids), gather_minus_logsumexp(teacher, ids)
    expected = (log_p - log_q).detach() * log_p
    loss = distill_per_token(student, teacher, support="sampled_token", alpha=1.0, token_ids=ids)
    torch.testing.assert_close(loss, expected, rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    (expected_grad,) = torch.autograd.grad(expected.sum(), student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-14, atol=1e-14)
