"""Self-distillation teacher rows for TRL's GRPO layout (the contexts come from `composer_core.selfteach`).

Teacher rows are laid out like the student's rows in TRL's GRPO trainer: a left-padded teacher prompt of width
P followed by the student's own completion ids of width T, right-padded exactly as given. Completion token t of
every sample therefore sits at column P + t of the teacher row, and the logits predicting it at column
P + t - 1: the teacher's completion logits are `logits[:, -T - 1:-1]`, aligned position by position with the
student's completion logits (see `TeacherBatch.completion_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from composer_core.errors import BatchError
from composer_core.selfteach import Message, RepromptSettings, TeacherContext, template_ids, truncate


@dataclass(frozen=True)
class TeacherBatch:
    """Teacher rows `[left-padded teacher prompt (P) | student completion ids (T), right-padded as given]`.

    input_ids and attention_mask are (B, P + T); sd_mask is (B, T) over the completion positions: the
    student's completion mask on samples with a teacher context, 0 on the others. Completion token t is at
    column prompt_length + t, its logits at column prompt_length + t - 1.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sd_mask: torch.Tensor
    prompt_length: int

    @property
    def completion_length(self) -> int:
        return self.input_ids.shape[1] - self.prompt_length

    def completion_logits(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's logits (B, T, vocab) predicting each completion token, aligned with the student's
        completion logits; computes only the last T + 1 positions (`logits_to_keep`)."""
        output = model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                       logits_to_keep=self.completion_length + 1, use_cache=False)
        return output.logits[:, :-1]


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise BatchError("the tokenizer has neither a pad token nor an eos token to pad teacher prompts with")


def tokenize_teacher_batch(tokenizer: Any, prompts: Sequence[Sequence[Message]], contexts: Sequence[TeacherContext],
                           completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                           settings: RepromptSettings | None = None,
                           chat_template_kwargs: Mapping[str, Any] | None = None) -> TeacherBatch:
    """Tokenise the teacher rows of a batch for one teacher forward.

    Each teacher prompt is the chat template of the sample's teacher messages with the generation prompt,
    truncated to settings.max_reprompt_len on settings.truncation_side; samples without a context use their
    original prompt (so the forward stays well defined) and get an all-zero sd_mask row. The student's
    completion_ids (B, T), right-padded, are appended unchanged and attended where completion_mask is 1, as in
    the student's own forward; the attention over completions and the sd_mask follow completion_mask.
    """
    settings = settings or RepromptSettings()
    if completion_ids.shape != completion_mask.shape or completion_ids.dim() != 2:
        raise BatchError(f"completion_ids {tuple(completion_ids.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must have the same (batch, length) shape")
    if not len(prompts) == len(contexts) == completion_ids.shape[0]:
        raise BatchError(f"got {len(prompts)} prompts, {len(contexts)} contexts and {completion_ids.shape[0]} "
                         "completion rows; they must match")
    rows = [truncate(template_ids(tokenizer, context.messages or prompt, chat_template_kwargs or {}), settings)
            for prompt, context in zip(prompts, contexts, strict=True)]
    has_context = [context.messages is not None for context in contexts]
    return left_padded_teacher_batch(rows, has_context, completion_ids, completion_mask, pad_id(tokenizer))


def left_padded_teacher_batch(rows: Sequence[list[int]], distilled: Sequence[bool], completion_ids: torch.Tensor,
                              completion_mask: torch.Tensor, pad: int) -> TeacherBatch:
    """`[left-padded teacher prompt | completion ids]` rows; the sd_mask is the completion mask on distilled rows."""
    width = max(len(row) for row in rows)
    device = completion_ids.device
    prompt_ids = torch.full((len(rows), width), pad, dtype=completion_ids.dtype, device=device)
    prompt_mask = torch.zeros((len(rows), width), dtype=completion_mask.dtype, device=device)
    for index, row in enumerate(rows):
        prompt_ids[index, width - len(row):] = torch.tensor(row, dtype=completion_ids.dtype, device=device)
        prompt_mask[index, width - len(row):] = 1
    on = torch.tensor(list(distilled), device=device).to(completion_mask.dtype).unsqueeze(1)
    return TeacherBatch(torch.cat([prompt_ids, completion_ids], dim=1),
                        torch.cat([prompt_mask, completion_mask], dim=1), completion_mask * on, width)
