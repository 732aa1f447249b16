"""Channel 2, self-distillation: per-token divergences between a student and a privileged teacher.

The teacher is the same policy given a hint, feedback or a sibling's solution; its logits arrive here
already computed on the teacher context and aligned with the student's response tokens. Teacher tensors
never receive gradients. Student p = softmax(z_s / tau), teacher q = softmax(z_t / tau).

alpha picks the divergence: 0 forward KL(q || p), 1 reverse KL(p || q), between them the generalised JSD
`(1 - alpha) KL(p || M) + alpha KL(q || M)` with `M = (1 - alpha) p + alpha q`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from composer_core.contracts import check_float
from composer_core.errors import BatchError, ConfigError
from composer_core.plugins import Register, hookimpl

Support = Literal["full", "student_topk", "teacher_topk", "sampled_token"]
Tail = Literal["bucket", "renormalise", "none"]
IS_LOG_RATIO_CLAMP = 20.0
TAIL_LOGSUMEXP_MAX = -1e-7  # keeps log(1 - P_topk) finite when the top-K holds all the mass
LOGSUMEXP_CHUNK_ELEMENTS = 1 << 22  # logits per chunk of `token_log_probs` (16 MB in float32)


@dataclass(frozen=True)
class Divergence:
    """A registered divergence: `pointwise(student_log_probs, teacher_log_probs, alpha)` returns the terms
    over the support (last dimension); they are optionally clipped, then summed."""

    name: str
    pointwise: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    description: str


def kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Pointwise terms of KL(p || q): p (log p - log q)."""
    return log_p.exp() * (log_p - log_q)


def generalized_jsd_terms(student: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pointwise terms of the alpha-generalised JSD (alpha 0: forward KL, 1: reverse KL)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return kl_terms(teacher, student)
    if alpha == 1.0:
        return kl_terms(student, teacher)
    mixture = torch.logaddexp(student + math.log1p(-alpha), teacher + math.log(alpha))
    return (1 - alpha) * kl_terms(student, mixture) + alpha * kl_terms(teacher, mixture)


BUILTIN_DIVERGENCES = (
    Divergence("generalized_jsd", generalized_jsd_terms,
               "alpha 0 forward KL(teacher || student), 1 reverse KL(student || teacher), between: generalised JSD"),
)


@hookimpl
def register_divergences(register: Register) -> None:
    for divergence in BUILTIN_DIVERGENCES:
        register(divergence)


def add_tail_bucket(log_probs: torch.Tensor) -> torch.Tensor:
    """Append one category holding the mass outside the top-K: `log(1 - sum_k p_k)`, computed stably."""
    captured = torch.logsumexp(log_probs, dim=-1, keepdim=True).clamp(max=TAIL_LOGSUMEXP_MAX)
    return torch.cat([log_probs, torch.log(-torch.expm1(captured))], dim=-1)


def renormalise(log_probs: torch.Tensor) -> torch.Tensor:
    """Condition a top-K subset on itself: log-probs that sum to one over the K entries."""
    return log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True)


def support_log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, support: Support,
                      top_k: int, tail: Tail) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs over the chosen support, last dimension aligned entry by entry."""
    student = torch.log_softmax(student_logits, dim=-1)
    teacher = torch.log_softmax(teacher_logits, dim=-1)
    if support == "full":
        return student, teacher
    if support not in ("student_topk", "teacher_topk"):
        raise ConfigError(f"unknown distillation support {support!r}; choose full, student_topk, teacher_topk "
                          "or sampled_token")
    if not 0 < top_k <= student.shape[-1]:
        raise ConfigError(f"top_k must be in [1, vocabulary size {student.shape[-1]}], got {top_k}")
    chooser = student if support == "student_topk" else teacher
    indices = chooser.topk(top_k, dim=-1).indices
    return with_tail(student.gather(-1, indices), teacher.gather(-1, indices), tail)


def with_tail(student: torch.Tensor, teacher: torch.Tensor, tail: Tail) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K log-probs completed by a tail bucket, renormalised over the K entries, or left as they are (the
    divergence is then a truncated sum over the K entries, as VeRL's top-K distillation computes it)."""
    if tail == "bucket":
        return add_tail_bucket(student), add_tail_bucket(teacher)
    if tail == "renormalise":
        return renormalise(student), renormalise(teacher)
    if tail == "none":
        return student, teacher
    raise ConfigError(f"unknown top-K tail handling {tail!r}; choose bucket, renormalise or none")


def on_mask(mask: torch.Tensor | None, per_token: Callable[..., torch.Tensor],
            *tensors: torch.Tensor | None) -> torch.Tensor:
    """`per_token(*tensors)` evaluated on the (batch, length) positions where `mask` is true only, returned as
    (batch, length) with zeros elsewhere: positions outside the mask are never read, so padding may hold NaN,
    Inf or any token id without reaching the loss or its gradients (docs/design.md)."""
    if mask is None:
        return per_token(*tensors)
    mask = mask.bool()
    leading = next(tensor for tensor in tensors if tensor is not None).shape[:mask.dim()]
    if tuple(mask.shape) != tuple(leading):
        raise BatchError(f"distillation mask has shape {tuple(mask.shape)} but the tensors it selects start with "
                         f"{tuple(leading)}; expected (batch, length)")
    values = per_token(*(None if tensor is None else tensor[mask] for tensor in tensors))
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor,
                    chunk_elements: int = LOGSUMEXP_CHUNK_ELEMENTS) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the log-softmax, nor even its exponentials: the
    normaliser is computed `chunk_elements` logits at a time (whole rows), forward and backward.

    logits (..., vocab), token_ids (...). The value and the gradient are those of
    `logits.gather(-1, ids) - logits.logsumexp(-1)`; the backward writes the gradient into one buffer of
    the logits' size, where autograd through that expression holds about three.
    """
    if token_ids.shape != logits.shape[:-1]:
        raise BatchError(f"token_ids has shape {tuple(token_ids.shape)} but the logits are "
                         f"{tuple(logits.shape)}; expected the logits' shape without the vocabulary")
    rows = max(1, chunk_elements // max(logits.shape[-1], 1))
    return _TokenLogProb.apply(logits, token_ids, rows)


def _row_chunks(total: int, rows: int) -> list[slice]:
    return [slice(start, min(start + rows, total)) for start in range(0, total, rows)]


class _TokenLogProb(torch.autograd.Function):
    """`token_log_probs` with a row-chunked logsumexp: forward and backward each hold one chunk of exponentials."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, token_ids: torch.Tensor, rows: int) -> torch.Tensor:
        flat, ids = logits.reshape(-1, logits.shape[-1]), token_ids.reshape(-1, 1)
        normaliser = flat.new_empty(flat.shape[0])
        for chunk in _row_chunks(flat.shape[0], rows):
            torch.logsumexp(flat[chunk], dim=-1, out=normaliser[chunk])
        ctx.save_for_backward(logits, token_ids, normaliser)
        ctx.rows = rows
        return (flat.gather(-1, ids).squeeze(-1) - normaliser).view(token_ids.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """d/dz (z_y - logsumexp z) = onehot(y) - softmax(z), scaled by the incoming gradient."""
        logits, token_ids, normaliser = ctx.saved_tensors
        flat, ids = logits.reshape(-1, logits.shape[-1]), token_ids.reshape(-1, 1)
        scale = grad.reshape(-1, 1)
        result = torch.empty_like(flat)
        for chunk in _row_chunks(flat.shape[0], ctx.rows):
            out = result[chunk]
            torch.sub(flat[chunk], normaliser[chunk].unsqueeze(-1), out=out)
            out.exp_().mul_(-scale[chunk])
        result.scatter_add_(-1, ids, scale.to(result.dtype))
        return result.view(logits.shape), None, None


def sampled_token_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       token_ids: torch.Tensor) -> torch.Tensor:
    """Reverse KL on the sampled token only: `sg(log p(y) - log q(y)) * log p(y)` (a REINFORCE estimator)."""
    log_p = token_log_probs(student_logits, token_ids)
    log_q = token_log_probs(teacher_logits, token_ids)
    return (log_p - log_q).detach() * log_p


def distill_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      support: Support = "full", alpha: float = 0.5, top_k: int = 100, tail: Tail = "bucket",
                      temperature: float = 1.0, pointwise_clip: float | None = None,
                      divergence: Divergence | None = None, token_ids: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token divergence (batch, length) from (batch, length, vocab) logits; the teacher is detached.

    token_ids (batch, length) are the sampled tokens, needed only by the sampled_token support. mask
    (batch, length), when given, restricts the computation to its positions: the result is zero elsewhere and
    nothing outside it (NaN, Inf, any token id) reaches the values or the gradients.
    """
    check_float("student_logits", student_logits)
    check_float("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise BatchError(f"teacher_logits has shape {tuple(teacher_logits.shape)} but student_logits has "
                         f"{tuple(student_logits.shape)}; align the teacher's response positions with the student's")
    if mask is not None:
        def unmasked(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
            return distill_per_token(student, teacher, support=support, alpha=alpha, top_k=top_k, tail=tail,
                                     temperature=temperature, pointwise_clip=pointwise_clip, divergence=divergence,
                                     token_ids=ids)

        return on_mask(mask, unmasked, student_logits, teacher_logits, token_ids)
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be positive, got {temperature}")
    teacher_logits = teacher_logits.detach()
    if temperature != 1.0:  # dividing by 1 would still copy both (batch, length, vocab) tensors
        student_logits, teacher_logits = student_logits / temperature, teacher_logits / temperature
    if support == "sampled_token":
        if alpha != 1.0:
            raise ConfigError(f"the sampled_token support estimates reverse KL only: set alpha=1.0 (got {alpha})")
        if token_ids is None or token_ids.shape != student_logits.shape[:-1]:
            raise BatchError("the sampled_token support needs token_ids of shape (batch, length) = "
                             f"{tuple(student_logits.shape[:-1])}")
        return sampled_token_loss(student_logits, teacher_logits, token_ids)
    student, teacher = support_log_probs(student_logits, teacher_logits, support, top_k, tail)
    terms = (divergence.pointwise if divergence else generalized_jsd_terms)(student, teacher, alpha)
    if pointwise_clip is not None:
        terms = terms.clamp(max=pointwise_clip)
    return terms.sum(-1)


def distill_per_token_precomputed(student_logits: torch.Tensor, support_ids: torch.Tensor,
                                  teacher_log_probs: torch.Tensor, *, support: Support = "teacher_topk",
                                  alpha: float = 0.5, tail: Tail = "bucket", temperature: float = 1.0,
                                  pointwise_clip: float | None = None, divergence: Divergence | None = None,
                                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """`distill_per_token` when the teacher was computed earlier, in a separate forward, and arrives as tensors.

    support_ids / teacher_log_probs (..., K): the token ids the divergence runs over and the teacher's
    log-probs there, at the same temperature. "teacher_topk": the teacher's top-K (this equals
    `distill_per_token(support="teacher_topk")` on the full teacher logits); "student_topk": the student's
    top-K taken when the teacher was computed (before the update, so the behaviour policy's top-K, which is the
    current student's on the first on-policy step); "sampled_token": K is 1 and the ids are the sampled tokens.
    mask (batch, length), when given, restricts the computation to its positions, as in `distill_per_token`.
    """
    check_float("student_logits", student_logits)
    check_float("teacher_log_probs", teacher_log_probs)
    if support_ids.shape != teacher_log_probs.shape or support_ids.shape[:-1] != student_logits.shape[:-1]:
        raise BatchError(f"support_ids {tuple(support_ids.shape)} and teacher_log_probs "
                         f"{tuple(teacher_log_probs.shape)} must both be {tuple(student_logits.shape[:-1])} + (K,)")
    if mask is not None:
        def unmasked(student: torch.Tensor, ids: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
            return distill_per_token_precomputed(student, ids, teacher, support=support, alpha=alpha, tail=tail,
                                                 temperature=temperature, pointwise_clip=pointwise_clip,
                                                 divergence=divergence)

        return on_mask(mask, unmasked, student_logits, support_ids, teacher_log_probs)
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be positive, got {temperature}")
    if temperature != 1.0:
        student_logits = student_logits / temperature
    teacher = teacher_log_probs.detach()
    if support == "sampled_token":
        if support_ids.shape[-1] != 1:
            raise BatchError(f"the sampled_token support takes the teacher's log-prob of the sampled token only "
                             f"(K = 1), got K = {support_ids.shape[-1]}")
        log_p = token_log_probs(student_logits, support_ids[..., 0])
        return (log_p - teacher[..., 0]).detach() * log_p
    if support not in ("teacher_topk", "student_topk"):
        raise ConfigError(f"support {support!r} needs the teacher's full logits at training time; with a "
                          "precomputed teacher choose teacher_topk, student_topk or sampled_token")
    student, teacher = with_tail(torch.log_softmax(student_logits, dim=-1).gather(-1, support_ids), teacher, tail)
    terms = (divergence.pointwise if divergence else generalized_jsd_terms)(student, teacher, alpha)
    if pointwise_clip is not None:
        terms = terms.clamp(max=pointwise_clip)
    return terms.sum(-1)


def teacher_topk(teacher_logits: torch.Tensor, top_k: int, temperature: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-K token ids and log-probs at `temperature`: what a separate teacher pass ships."""
    log_probs = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, ids = log_probs.topk(top_k, dim=-1)
    return ids, values


def distill_per_token_from_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                                  lm_head_weight: torch.Tensor, *, chunk_size: int = 1024,
                                  mask: torch.Tensor | None = None, **options: object) -> torch.Tensor:
    """`distill_per_token` from final hidden states (batch, length, hidden), never holding all logits.

    Tokens are processed in chunks of `chunk_size` rows of the flattened batch; each chunk's logits are
    recomputed in the backward pass (activation checkpointing), so peak memory is chunk_size x vocab. mask
    (batch, length), when given, restricts the computation to its positions, as in `distill_per_token`.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise BatchError(f"teacher_hidden has shape {tuple(teacher_hidden.shape)} but student_hidden has "
                         f"{tuple(student_hidden.shape)}")
    token_ids = options.pop("token_ids", None)

    def chunk_loss(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher @ lm_head_weight.T
        return distill_per_token(student @ lm_head_weight.T, teacher_logits, token_ids=ids, **options)

    def chunked(student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        flat_student, flat_teacher = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
        flat_ids = None if ids is None else ids.reshape(-1)
        pieces = [checkpoint(chunk_loss, flat_student[start:start + chunk_size],
                             flat_teacher[start:start + chunk_size],
                             None if flat_ids is None else flat_ids[start:start + chunk_size], use_reentrant=False)
                  for start in range(0, flat_student.shape[0], chunk_size)]
        if not pieces:
            return student.new_zeros(student.shape[:-1])
        return torch.cat(pieces).reshape(student.shape[:-1])

    return on_mask(mask, chunked, student_hidden, teacher_hidden.detach(), token_ids)


def importance_weight(log_prob: torch.Tensor, old_log_prob: torch.Tensor, is_clip: float) -> torch.Tensor:
    """Stopped per-token IS weight `min(exp(clamp(log pi - log pi_old, -20, 20)), is_clip)` (upper cap only)."""
    log_ratio = (log_prob - old_log_prob).detach().clamp(-IS_LOG_RATIO_CLAMP, IS_LOG_RATIO_CLAMP)
    return log_ratio.exp().clamp(max=is_clip)
