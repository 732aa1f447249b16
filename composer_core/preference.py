"""Channel 3, trace-replay DPO: DPO-family losses on sequence log-probs.

This channel is composer-core's own research addition, NOT part of Cursor's Composer recipe: preference
pairs come from replaying agent traces with N external teachers and turning their (dis)agreement into
chosen / rejected actions. With `delta = (log pi_c - log ref_c) - (log pi_r - log ref_r)`, each loss maps
a batch of pairs to a per-pair loss; beta = 0 turns the channel off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from composer_core.contracts import check_finite, check_float
from composer_core.errors import BatchError
from composer_core.plugins import Register, hookimpl


@dataclass(frozen=True)
class PreferenceBatch:
    """Per-pair (pairs,) summed log-probs of the chosen and rejected completions under policy and reference;
    lengths are the completions' token counts (needed by the length-normalised losses)."""

    chosen_log_prob: torch.Tensor
    rejected_log_prob: torch.Tensor
    ref_chosen_log_prob: torch.Tensor
    ref_rejected_log_prob: torch.Tensor
    chosen_length: torch.Tensor | None = None
    rejected_length: torch.Tensor | None = None

    def __post_init__(self) -> None:
        tensors = {name: getattr(self, name) for name in ("chosen_log_prob", "rejected_log_prob",
                                                          "ref_chosen_log_prob", "ref_rejected_log_prob")}
        lengths = {name: getattr(self, name) for name in ("chosen_length", "rejected_length")
                   if getattr(self, name) is not None}
        for name, tensor in tensors.items():
            check_float(name, tensor)
            check_finite(name, tensor)
        expected = tensors["chosen_log_prob"].shape
        for name, tensor in {**tensors, **lengths}.items():
            if tensor.dim() != 1 or tensor.shape != expected:
                raise BatchError(f"{name} has shape {tuple(tensor.shape)}; every preference tensor must be "
                                 f"(pairs,) = {tuple(expected)}")

    @property
    def chosen_log_ratio(self) -> torch.Tensor:
        return self.chosen_log_prob - self.ref_chosen_log_prob

    @property
    def rejected_log_ratio(self) -> torch.Tensor:
        return self.rejected_log_prob - self.ref_rejected_log_prob

    @property
    def delta(self) -> torch.Tensor:
        return self.chosen_log_ratio - self.rejected_log_ratio


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered preference loss: `fn(batch, beta, label_smoothing) -> (pairs,)` per-pair loss."""

    name: str
    fn: Callable[[PreferenceBatch, float, float], torch.Tensor]
    description: str


def sigmoid_loss(batch: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO: `-log sigmoid(beta delta)`, with conservative label smoothing when label_smoothing > 0."""
    logits = beta * batch.delta
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(batch: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO: `(delta_norm - 1/(2 beta))^2` on length-normalised log-ratios (TRL's form)."""
    if batch.chosen_length is None or batch.rejected_length is None:
        raise BatchError("the ipo loss normalises by completion length: pass chosen_length and rejected_length")
    chosen = batch.chosen_log_ratio / batch.chosen_length.clamp(min=1)
    rejected = batch.rejected_log_ratio / batch.rejected_length.clamp(min=1)
    return (chosen - rejected - 1 / (2 * beta)) ** 2


def hinge_loss(batch: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """SLiC hinge: `relu(1 - beta delta)`."""
    return torch.relu(1 - beta * batch.delta)


def robust_loss(batch: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """Robust DPO (unbiased under label noise rate `label_smoothing` < 0.5)."""
    if not 0 <= label_smoothing < 0.5:
        raise BatchError(f"the robust loss needs label_smoothing in [0, 0.5), got {label_smoothing}")
    logits = beta * batch.delta
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    return (clean - flipped) / (1 - 2 * label_smoothing)


def nca_pair_loss(batch: PreferenceBatch, beta: float, label_smoothing: float) -> torch.Tensor:
    """NCA (pairwise): pushes the chosen reward up in absolute terms, not only relative to the rejected."""
    chosen = beta * batch.chosen_log_ratio
    rejected = beta * batch.rejected_log_ratio
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


BUILTIN_PREFERENCE_LOSSES = (
    PreferenceLoss("sigmoid", sigmoid_loss, "DPO: -log sigmoid(beta delta)"),
    PreferenceLoss("ipo", ipo_loss, "IPO: (delta_len_norm - 1/(2 beta))^2"),
    PreferenceLoss("hinge", hinge_loss, "SLiC: relu(1 - beta delta)"),
    PreferenceLoss("robust", robust_loss, "robust DPO under label noise (label_smoothing = noise rate)"),
    PreferenceLoss("nca_pair", nca_pair_loss, "NCA pairwise"),
)


@hookimpl
def register_preference_losses(register: Register) -> None:
    for loss in BUILTIN_PREFERENCE_LOSSES:
        register(loss)
