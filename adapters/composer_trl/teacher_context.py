"""Self-distillation teacher rows for TRL's GRPO layout (the contexts come from `composer_core.selfteach`).

Teacher rows are laid out like the student's rows in TRL's GRPO trainer: a left-padded teacher prompt of width
P followed by the student's own completion ids of width T, right-padded exactly as given. Completion token t of
every sample therefore sits at column P + t of the teacher row, and the logits predicting it at column
P + t - 1: the teacher's completion logits are `logits[:, -T - 1:-1]`, aligned position by position with the
student's completion logits (see `TeacherBatch.completion_logits`).

When siblings' teacher prompts begin alike (the same question, the same demonstration), the forward can run in two
passes (`SharedPrefixForward`): each group's common prompt prefix once, then every row's rest of the prompt and its
completion on a copy of that prefix's key/value cache. Positions keep every token's distance to every other
(rotary models), so the logits equal the one-pass ones up to float rounding.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from composer_core.errors import BatchError
from composer_core.selfteach import Message, RepromptSettings, TeacherContext, batch_template_ids, truncate

MIN_SHARED_SAVING = 0.1  # the two-pass forward runs when it saves at least this fraction of the forwarded tokens
SHARED_PREFIX_ATTENTION = ("sdpa", "eager")  # attention implementations the two-pass forward is checked with


@dataclass(frozen=True)
class TeacherBatch:
    """Teacher rows `[left-padded teacher prompt (P) | student completion ids (T), right-padded as given]`.

    input_ids and attention_mask are (B, P + T); sd_mask is (B, T) over the completion positions: the
    student's completion mask on samples with a teacher context, 0 on the others. Completion token t is at
    column prompt_length + t, its logits at column prompt_length + t - 1. prefix_group and prefix_length (B,),
    when given, say which rows share how many leading prompt tokens (`shared_prefixes`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sd_mask: torch.Tensor
    prompt_length: int
    prefix_group: torch.Tensor | None = None
    prefix_length: torch.Tensor | None = None

    @property
    def completion_length(self) -> int:
        return self.input_ids.shape[1] - self.prompt_length

    def completion_logits(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's logits (B, T, vocab) predicting each completion token, aligned with the student's
        completion logits; computes only the last T + 1 positions (`logits_to_keep`), in two passes when the rows'
        shared prompt prefixes save enough (`SharedPrefixForward`)."""
        shared = SharedPrefixForward.plan(self, model)
        logits = shared.completion_logits(model) if shared is not None else None
        if logits is not None:
            return logits
        output = model(input_ids=self.input_ids, attention_mask=self.attention_mask,
                       logits_to_keep=self.completion_length + 1, use_cache=False)
        return output.logits[:, :-1]


@dataclass(frozen=True)
class SharedPrefixForward:
    """The teacher forward in two passes: the G distinct shared prefixes (left-padded to A), then each row's rest of
    the prompt (left-padded to S) and its completion on its prefix's cache. A rest token j sits at position A + j
    and a prefix token k at A - (prefix length) + k, so distances are those of the one-pass rows."""

    prefix_ids: torch.Tensor  # (G, A)
    prefix_mask: torch.Tensor  # (G, A)
    row_prefix: torch.Tensor  # (B,) each row's prefix
    rest_ids: torch.Tensor  # (B, S + T)
    rest_mask: torch.Tensor  # (B, S + T)
    rest_positions: torch.Tensor  # (B, S + T)
    completion_length: int

    @classmethod
    def plan(cls, batch: TeacherBatch, model: torch.nn.Module) -> SharedPrefixForward | None:
        """The two passes for `batch`, or None: no prefix groups, a model the split is not checked for, or fewer than
        MIN_SHARED_SAVING of the forwarded tokens saved."""
        rows, prompt, completion = batch.input_ids.shape[0], batch.prompt_length, batch.completion_length
        if batch.prefix_group is None or batch.prefix_length is None or not rows or not splittable(model):
            return None
        device = batch.input_ids.device
        distinct, row_prefix = torch.unique(batch.prefix_group, return_inverse=True)
        leader = torch.full((distinct.numel(),), rows, device=device).scatter_reduce_(
            0, row_prefix, torch.arange(rows, device=device), reduce="amin")  # each prefix's first row
        lengths = batch.attention_mask[:, :prompt].sum(1)
        shared = batch.prefix_length[leader]
        rest = lengths - shared[row_prefix]
        width, rest_width, fewest_shared, fewest_rest = torch.stack(
            [shared.max(), rest.max(), shared.min(), rest.min()]).tolist()  # one device sync
        forwarded = distinct.numel() * width + rows * (rest_width + completion)
        if fewest_shared < 1 or fewest_rest < 1 or forwarded > (1 - MIN_SHARED_SAVING) * rows * (prompt + completion):
            return None
        prefix_ids, prefix_mask = prefix_rows(batch, leader, lengths[leader], shared, width)
        rest_ids, rest_mask, positions = rest_rows(batch, rest, rest_width, width)
        return cls(prefix_ids, prefix_mask, row_prefix, rest_ids, rest_mask, positions, completion)

    def completion_logits(self, model: torch.nn.Module) -> torch.Tensor | None:
        """Logits (B, T, vocab) predicting each completion token: the last rest-of-prompt token's and the
        completion's (every row keeps at least one prompt token after its prefix). None when the model left the
        cache it was handed empty (a forward that ignores past_key_values)."""
        cache = DynamicCache(config=model.config)  # filled in place: wrappers of forward may drop returned caches
        model(input_ids=self.prefix_ids, attention_mask=self.prefix_mask, past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        if cache.get_seq_length() != self.prefix_ids.shape[1]:
            return None
        cache.batch_select_indices(self.row_prefix)
        mask = torch.cat([self.prefix_mask[self.row_prefix], self.rest_mask], dim=1)
        output = model(input_ids=self.rest_ids, attention_mask=mask, position_ids=self.rest_positions,
                       past_key_values=cache, logits_to_keep=self.completion_length + 1, use_cache=True)
        return output.logits[:, :-1]


def prefix_rows(batch: TeacherBatch, leader: torch.Tensor, lengths: torch.Tensor, shared: torch.Tensor,
                width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prefix's first `shared` prompt tokens, taken from its leader row (whose prompt has `lengths` tokens),
    left-padded to `width`: ids and mask (G, width)."""
    columns = torch.arange(width, device=leader.device)
    padding = (width - shared).unsqueeze(1)
    source = (batch.prompt_length - lengths).unsqueeze(1) + columns - padding
    prefix_ids = batch.input_ids[leader].gather(1, source.clamp(min=0))  # pad columns hold any id: masked
    return prefix_ids, (columns >= padding).to(batch.attention_mask.dtype)


def rest_rows(batch: TeacherBatch, rest: torch.Tensor, rest_width: int, width: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's last `rest` prompt tokens and its completion: the last rest_width + T columns of the one-pass
    row (the prompt is right-aligned at P) with the prefix's columns masked, and the positions that continue
    the prefix (the first rest token at `width`)."""
    tail = batch.input_ids.shape[1] - batch.prompt_length + rest_width
    columns = torch.arange(tail, device=rest.device)
    start = (rest_width - rest).unsqueeze(1)
    mask = batch.attention_mask[:, -tail:]
    return batch.input_ids[:, -tail:], mask * (columns >= start).to(mask.dtype), (width + columns - start).clamp(min=0)


def splittable(model: torch.nn.Module) -> bool:
    """Whether the two-pass forward gives the one-pass logits: rotary positions (only distances matter; not the
    multimodal variant), full attention in every layer (a sliding window's or a recurrent layer's cache does not
    hold the whole prefix) and an attention implementation it is checked with."""
    config = getattr(model, "config", None)
    rope = getattr(config, "rope_parameters", None)
    layers = getattr(config, "layer_types", None)
    full = all(kind == "full_attention" for kind in layers) if layers else getattr(config, "sliding_window", None) \
        is None
    return (isinstance(rope, Mapping) and "mrope_section" not in rope and full
            and getattr(config, "_attn_implementation", None) in SHARED_PREFIX_ATTENTION)


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
    the student's own forward; the attention over completions and the sd_mask follow completion_mask. Samples of
    one prompt with the same kind of context form a prefix group (`prefix_key`, `shared_prefixes`).
    """
    settings = settings or RepromptSettings()
    if completion_ids.shape != completion_mask.shape or completion_ids.dim() != 2:
        raise BatchError(f"completion_ids {tuple(completion_ids.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must have the same (batch, length) shape")
    if not len(prompts) == len(contexts) == completion_ids.shape[0]:
        raise BatchError(f"got {len(prompts)} prompts, {len(contexts)} contexts and {completion_ids.shape[0]} "
                         "completion rows; they must match")
    messages = [context.messages or prompt for prompt, context in zip(prompts, contexts, strict=True)]
    rows = [truncate(ids, settings) for ids in batch_template_ids(tokenizer, messages, chat_template_kwargs or {})]
    has_context = [context.messages is not None for context in contexts]
    return left_padded_teacher_batch(rows, has_context, completion_ids, completion_mask, pad_id(tokenizer),
                                     prefix_keys=[prefix_key(prompt, context) for prompt, context
                                                  in zip(prompts, contexts, strict=True)])


def prefix_key(prompt: Sequence[Message], context: TeacherContext | None) -> str:
    """The prefix group of a sample: its prompt and what its teacher context holds. Siblings with the same kind of
    context begin alike for longest (the same demonstration, or the feedback paragraph's opening); one without a
    context, whose teacher prompt is its own prompt, would cut the group's common prefix short."""
    return repr((prompt, context.sources if context is not None else None))


def shared_prefixes(rows: Sequence[list[int]], keys: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    """Per row, its prefix group (the rows of one key) and how many leading tokens the group shares: their longest
    common prefix, leaving every row at least its last token."""
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    groups, lengths = [0] * len(rows), [0] * len(rows)
    for group, indices in enumerate(members.values()):
        texts = [rows[index] for index in indices]
        shared = min(common_prefix_length(texts), min(map(len, texts)) - 1)
        for index in indices:
            groups[index], lengths[index] = group, shared
    return groups, lengths


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all rows have in common (those of the lexicographically first and last row)."""
    first, last = min(rows), max(rows)
    for index, (token, other) in enumerate(zip(first, last, strict=False)):
        if token != other:
            return index
    return min(len(first), len(last))


def left_padded_teacher_batch(rows: Sequence[list[int]], distilled: Sequence[bool], completion_ids: torch.Tensor,
                              completion_mask: torch.Tensor, pad: int,
                              prefix_keys: Sequence[Hashable] | None = None) -> TeacherBatch:
    """`[left-padded teacher prompt | completion ids]` rows; the sd_mask is the completion mask on distilled rows.
    With prefix_keys, rows of one key form a prefix group (`shared_prefixes`)."""
    width = max(len(row) for row in rows)
    device = completion_ids.device
    prompt_ids = torch.tensor([[pad] * (width - len(row)) + list(row) for row in rows], dtype=completion_ids.dtype,
                              device=device)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    prompt_mask = (torch.arange(width, device=device) >= width - lengths.unsqueeze(1)).to(completion_mask.dtype)
    on = torch.tensor(list(distilled), device=device).to(completion_mask.dtype).unsqueeze(1)
    groups = None if prefix_keys is None else \
        torch.tensor(shared_prefixes(rows, prefix_keys), dtype=torch.long, device=device)
    return TeacherBatch(torch.cat([prompt_ids, completion_ids], dim=1),
                        torch.cat([prompt_mask, completion_mask], dim=1), completion_mask * on, width,
                        *(groups.unbind(0) if groups is not None else (None, None)))
