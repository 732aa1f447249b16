"""The self-distillation teacher: its weights, and its rows (teacher context + the student's completion).

Teacher contexts come from composer_core.selfteach (a successful sibling's solution, the reward's feedback, the
task's hint, in the student's last user message); the teacher scores the student's own completion after that
context. Weights (`distill.teacher`, as on the other backends):

- `ema`: a copy updated after every optimizer step, teacher <- (1 - r) teacher + r student (SDPO, r = 0.05);
- `frozen`: a copy of the initial weights;
- `trust-region`: logits (1 - r) z_frozen + r z_student, both on the teacher context;
- `live`: the current student, without gradient.

Every rank holds the same weights and applies the same update, so the teacher needs no communication.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from composer_core.errors import ConfigError
from composer_core.selfteach import ContextCounts, RepromptSettings, build_teacher_contexts, truncate
from composer_torchtune.chat_tokenizer import ChatTokenizer
from composer_torchtune.sampling import left_pad

STRATEGIES = ("ema", "frozen", "trust-region", "live")
Forward = Callable[[nn.Module], torch.Tensor]


class TeacherWeights:
    """The teacher's weights for one student model."""

    def __init__(self, student: nn.Module, strategy: str = "ema", rate: float = 0.05) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"teacher.strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        self.student, self.strategy, self.rate = student, strategy, rate
        self.copy = None if strategy == "live" else copy.deepcopy(student).requires_grad_(False).eval()

    @torch.no_grad()
    def logits(self, forward: Forward) -> torch.Tensor:
        """`forward(model)` on the teacher's weights, without gradient."""
        if self.copy is None:
            return forward(self.student)
        if self.strategy == "trust-region":
            return (1 - self.rate) * forward(self.copy) + self.rate * forward(self.student)
        return forward(self.copy)

    @torch.no_grad()
    def after_step(self) -> None:
        """The EMA update (the other strategies keep their weights)."""
        if self.strategy != "ema" or self.copy is None:
            return
        for teacher, student in zip(self.copy.parameters(), self.student.parameters(), strict=True):
            teacher.lerp_(student.detach(), self.rate)


@dataclass(frozen=True)
class TeacherRows:
    """Left-padded teacher prompts (one per sample; the student's own where it has no context), which samples
    have a teacher context, and the context counts for logging."""

    prompts: torch.Tensor
    has_context: torch.Tensor
    counts: ContextCounts


def teacher_rows(tokenizer: ChatTokenizer, prompts: Sequence[list[dict[str, Any]]], completions: Sequence[str],
                 groups: Sequence[Hashable], rewards: Sequence[float], feedback: Sequence[str | None],
                 hints: Sequence[str | None] | None, settings: RepromptSettings,
                 student_prompts: Sequence[list[int]]) -> TeacherRows:
    """The teacher's prompt tokens for one batch, from composer_core.selfteach's contexts."""
    built = build_teacher_contexts(prompts, completions, groups, rewards, feedback, hints, settings)
    rows = [truncate(tokenizer.encode_messages(context.messages), settings) if context.messages is not None
            else list(student) for context, student in zip(built.contexts, student_prompts, strict=True)]
    has_context = torch.tensor([context.messages is not None for context in built.contexts])
    return TeacherRows(left_pad(rows, tokenizer.pad_id), has_context, built.counts)
