"""Channel 2 against TRL (SDPO loss utils, GKD's generalised JSD), and chunked-from-hidden vs materialised logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from trl.experimental.gkd.gkd_trainer import GKDTrainer
from trl.experimental.sdpo import loss_utils

from benchmarks.core import CaseSpec, Pair
from composer_core.distill import (
    distill_per_token,
    distill_per_token_from_hidden,
    distill_per_token_precomputed,
    teacher_topk,
)
from composer_core.objectives import aggregate

TOLERANCE = 1e-4
TOP_K = 100
Loss = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class LogitTensors:
    """Student logits (the gradient leaf), teacher logits close to them, sampled tokens and a response mask."""

    student: torch.Tensor
    teacher: torch.Tensor
    token_ids: torch.Tensor
    mask: torch.Tensor


def make_logits(batch: int, length: int, vocab: int, device: torch.device, seed: int = 0) -> LogitTensors:
    """Logits of scale 2 (peaked enough that a top-K holds real mass); the teacher is the student plus noise."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=generator) * 2
    teacher = student + torch.randn(batch, length, vocab, generator=generator)
    token_ids = torch.randint(vocab, (batch, length), generator=generator)
    lengths = torch.randint(max(length // 4, 1), length + 1, (batch,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return LogitTensors(student.to(device).requires_grad_(), teacher.to(device), token_ids.to(device), mask.to(device))


def divergence_pair(mode: str, alpha: float, tensors: LogitTensors) -> tuple[Loss, Loss]:
    """Ours and TRL's callables for one support: full, gkd, topk_tail, topk_renormalise or sampled."""
    student, teacher, ids = tensors.student, tensors.teacher, tensors.token_ids
    if mode == "full":
        return (lambda: distill_per_token(student, teacher, support="full", alpha=alpha),
                lambda: loss_utils.compute_full_logit_self_distillation_loss(student, teacher,
                                                                             distillation_alpha=alpha))
    if mode == "gkd":
        labels = ids.masked_fill(~tensors.mask, -100)
        return (lambda: aggregate(distill_per_token(student, teacher, support="full", alpha=alpha), tensors.mask,
                                  "token-mean"),
                lambda: GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=alpha))
    if mode in ("topk_tail", "topk_renormalise"):
        tail = "bucket" if mode == "topk_tail" else "renormalise"
        return (lambda: distill_per_token(student, teacher, support="student_topk", alpha=alpha, top_k=TOP_K,
                                          tail=tail),
                lambda: loss_utils.compute_topk_self_distillation_loss(
                    student, teacher, distillation_topk=TOP_K, distillation_alpha=alpha,
                    distillation_add_tail=tail == "bucket"))
    if mode == "verl_teacher_topk":
        return verl_teacher_topk_pair(tensors)
    if mode == "sampled":
        return (lambda: distill_per_token(student, teacher, support="sampled_token", alpha=alpha, token_ids=ids),
                lambda: loss_utils.compute_sampled_token_self_distillation_loss(student, teacher, ids,
                                                                                distillation_alpha=alpha))
    raise ValueError(f"unknown divergence benchmark mode {mode!r}")


def verl_teacher_topk_pair(tensors: LogitTensors) -> tuple[Loss, Loss]:
    """The composer VeRL backend's distillation (a teacher shipped as top-K tensors) against VeRL's own
    on-policy distillation loss, on the packed (1, batch x length, vocab) logits VeRL's FSDP engine passes."""
    from verl.trainer.distillation.fsdp.losses import compute_forward_kl_topk
    from verl.workers.config import DistillationConfig, DistillationLossConfig

    vocab = tensors.student.shape[-1]
    student = tensors.student.view(1, -1, vocab)
    ids, log_probs = teacher_topk(tensors.teacher.detach().view(1, -1, vocab), TOP_K)
    offsets = torch.arange(0, student.shape[1] + 1, tensors.student.shape[1], device=student.device)
    nested_ids = torch.nested.nested_tensor_from_jagged(ids[0], offsets)
    nested_log_probs = torch.nested.nested_tensor_from_jagged(log_probs[0], offsets)
    config = DistillationConfig(distillation_loss=DistillationLossConfig(log_prob_min_clamp=None))
    return (lambda: distill_per_token_precomputed(student, ids, log_probs, alpha=0.0, tail="none"),
            lambda: compute_forward_kl_topk(student_logits=student, teacher_topk_log_probs=nested_log_probs,
                                            teacher_topk_ids=nested_ids, config=config,
                                            data_format="thd")["distillation_losses"])


def prepare_divergence(spec: CaseSpec, device: torch.device) -> Pair:
    """A TRL comparison on (batch, length, vocab) logits; options: mode, alpha."""
    batch, length, vocab = spec.shape
    tensors = make_logits(batch, length, vocab, device)
    ours, theirs = divergence_pair(spec.options["mode"], spec.options["alpha"], tensors)
    top_k = f", K={TOP_K}" if "topk" in spec.options["mode"] else ""
    return Pair(ours, theirs, (tensors.student,), f"{batch}x{length}x{vocab}{top_k}", TOLERANCE)


def prepare_hidden(spec: CaseSpec, device: torch.device) -> Pair:
    """`distill_per_token_from_hidden` (chunked, recomputed in backward) vs the same loss on materialised logits.

    shape is (batch, length, hidden, vocab); options: chunk_size, alpha. The lm_head weight is trained too.
    """
    batch, length, hidden, vocab = spec.shape
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch, length, hidden, generator=generator).to(device).requires_grad_()
    teacher = (student.detach() + 0.5 * torch.randn(batch, length, hidden, generator=generator).to(device))
    weight = (torch.randn(vocab, hidden, generator=generator) / hidden**0.5).to(device).requires_grad_()
    alpha, chunk = spec.options["alpha"], spec.options["chunk_size"]

    def materialised() -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher @ weight.T
        return distill_per_token(student @ weight.T, teacher_logits, support="full", alpha=alpha)

    def chunked() -> torch.Tensor:
        return distill_per_token_from_hidden(student, teacher, weight, chunk_size=chunk, support="full", alpha=alpha)

    label = f"{batch}x{length}, H={hidden}, V={vocab}, chunk={chunk}"
    return Pair(chunked, materialised, (student, weight), label, TOLERANCE)


def cases(batch: int, length: int, vocab: int, repeats: int) -> list[CaseSpec]:
    """Full vocabulary (SDPO and GKD), student top-K with tail and renormalised (alpha 0.5), sampled token (1.0),
    and the VeRL backend's teacher top-K tensors against VeRL's own distillation loss (forward KL)."""
    shape = (batch, length, vocab)
    return [
        CaseSpec("full vocab, a=0.5", "divergence", shape, "TRL SDPO full-logit", {"mode": "full", "alpha": 0.5},
                 repeats),
        CaseSpec("full vocab + token-mean, a=0.5", "divergence", shape, "TRL GKD generalized_jsd_loss",
                 {"mode": "gkd", "alpha": 0.5}, repeats),
        CaseSpec("student top-K + tail, a=0.5", "divergence", shape, "TRL SDPO top-K + tail",
                 {"mode": "topk_tail", "alpha": 0.5}, repeats),
        CaseSpec("student top-K renormalised, a=0.5", "divergence", shape, "TRL SDPO top-K renormalised",
                 {"mode": "topk_renormalise", "alpha": 0.5}, repeats),
        CaseSpec("sampled token, a=1.0", "divergence", shape, "TRL SDPO sampled-token",
                 {"mode": "sampled", "alpha": 1.0}, repeats),
        CaseSpec("teacher top-K tensors, forward KL", "divergence", shape, "verl on-policy distillation top-K",
                 {"mode": "verl_teacher_topk", "alpha": 0.0}, repeats),
    ]


def hidden_case(batch: int, length: int, hidden: int, vocab: int, chunk_size: int, repeats: int) -> CaseSpec:
    """Chunked distillation from hidden states, full vocabulary, alpha 0.5."""
    return CaseSpec("chunked from hidden (full, a=0.5)", "hidden", (batch, length, hidden, vocab),
                    "ours on materialised logits", {"chunk_size": chunk_size, "alpha": 0.5}, repeats)
