"""Off-policy agent-trace targets (`data.targets_mode: off_policy`): distillation on the trace's own target message.

Every step also draws a batch of targets (in a seeded cycle reshuffled every epoch, as the preference pairs of
composer_trl.preference_mixer are drawn) and teacher-forces the trace's target message: the student scores it after
the student context, the teacher (the configured distill.teacher weights) after the hinted teacher context, and
channel 2's divergence on the message's tokens is added to the step's loss with the distill weight. There is no
behaviour policy to correct for (the tokens are the trace's), so no importance weight applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from composer_core import ComposerLoss, DistillInputs, Normaliser
from composer_core.errors import ConfigError
from composer_trl.cycle import SeededCycle
from composer_trl.targets_data import TargetsReport, TokenizedTarget
from composer_trl.teacher_context import TeacherBatch, left_padded_teacher_batch
from composer_trl.teacher_weights import TeacherWeights

METRIC_PREFIX = "composer/targets/off_policy/"


@dataclass(frozen=True)
class OffPolicyBatch:
    """B targets as student rows and teacher rows `[left-padded prompt | right-padded target message]`; target_ids
    and mask are (B, T), the mask 1 on each message's tokens."""

    student: TeacherBatch
    teacher: TeacherBatch
    target_ids: torch.Tensor
    mask: torch.Tensor


def collate_targets(targets: Sequence[TokenizedTarget], pad: int, device: torch.device | str | None = None
                    ) -> OffPolicyBatch:
    """The targets' student and teacher rows sharing one right-padded block of target-message ids."""
    width = max(len(target.target) for target in targets)
    target_ids = torch.full((len(targets), width), pad, dtype=torch.long)
    mask = torch.zeros((len(targets), width), dtype=torch.long)
    for index, target in enumerate(targets):
        target_ids[index, :len(target.target)] = torch.tensor(target.target, dtype=torch.long)
        mask[index, :len(target.target)] = 1
    target_ids, mask = target_ids.to(device), mask.to(device)
    every = [True] * len(targets)
    student = left_padded_teacher_batch([target.student_prompt for target in targets], every, target_ids, mask, pad)
    teacher = left_padded_teacher_batch([target.teacher_prompt for target in targets], every, target_ids, mask, pad)
    return OffPolicyBatch(student, teacher, target_ids, mask)


class OffPolicyTargets:
    """Cycles through the tokenised targets `batch_size` at a time and computes their distillation term."""

    def __init__(self, targets: list[TokenizedTarget], report: TargetsReport, *, batch_size: int, pad: int,
                 seed: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 targets, got {batch_size}")
        self.targets = targets
        self.report = report
        self.batch_size = batch_size
        self.pad = pad
        self.cycle = SeededCycle(len(targets), seed=seed)

    def next_batch(self, device: torch.device | str | None = None) -> OffPolicyBatch:
        """The next `batch_size` targets of the cycle."""
        return collate_targets([self.targets[index] for index in self.cycle.take(self.batch_size)], self.pad, device)

    def term(self, loss: ComposerLoss, model: Any, teacher: TeacherWeights, student_model: Any, scale: float,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """distill.weight times the divergence on the next batch's target messages, and its metrics; `model` is
        what the student forward runs through (with gradient), `student_model` the unwrapped model the teacher
        weights derive from."""
        batch = self.next_batch(device)
        student_logits = batch.student.completion_logits(model)
        teacher_logits = teacher.teacher_logits(student_model, batch.teacher.completion_logits)
        inputs = DistillInputs(student_logits, teacher_logits, batch.mask, response_mask=batch.mask,
                               token_ids=batch.target_ids)
        value, metrics = loss.distill_loss(inputs, Normaliser(scale=scale))
        self.report.trained["off_policy_targets"] += batch.mask.shape[0]
        self.report.trained["off_policy_tokens"] += int(batch.mask.sum())
        return loss.config.distill.weight * value, {f"{METRIC_PREFIX}{name.removeprefix('distill/')}": number
                                                    for name, number in metrics.items()}

    def state_dict(self) -> dict[str, Any]:
        """Where the cycle stands: a resumed run draws the targets it would have."""
        return self.cycle.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycle.load_state_dict(state, "off-policy targets", "data.targets file and limits")
