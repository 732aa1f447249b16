"""The self-distillation teacher pass of one VeRL training batch, as pure functions over tensors and texts.

1. `teacher_rows`: each sample's teacher prompt (its chat messages rewritten with a demonstration, feedback or
   a hint, tokenised with the chat template) followed by the sample's own response ids, in the per-sample
   layout VeRL's engine reads (input_ids, position_ids, prompts, responses, response_mask, loss_mask).
2. The actor's forward on those rows returns the teacher's top-K at every position (`composite_loss`).
3. `response_topk`: the top-K at the positions that predict the response tokens, per sample (R_i, K); they
   are stored with the student's sample and placed at its own positions by the logits processor. With the
   student_topk support a student pass first takes the student's top-K ids (`response_columns`), which the
   teacher pass scores; with sampled_token, `response_sampled` keeps the teacher's log-prob of each sampled
   token (K = 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict
from verl.workers.utils.padding import response_from_nested

from composer_core.errors import BatchError
from composer_core.selfteach import Message, RepromptSettings, TeacherContext, template_ids, truncate
from composer_verl.composite_loss import DISTILL_MASK, TEACHER_IDS, TEACHER_LOG_PROBS, topk_keys


def nested(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)


def per_sample(tensor: torch.Tensor) -> list[torch.Tensor]:
    """A nested (or padded, all rows full) tensor as its per-sample rows."""
    return list(tensor.unbind()) if tensor.is_nested else list(tensor)


def sequence_rewards(rm_scores: torch.Tensor) -> list[float]:
    """VeRL's token-level scores (reward on the last token) summed per sample."""
    return [float(row.sum()) for row in per_sample(rm_scores)]


def teacher_prompt_ids(tokenizer: Any, prompt_ids: torch.Tensor, context: TeacherContext,
                       settings: RepromptSettings, chat_template_kwargs: Mapping[str, Any]) -> torch.Tensor:
    """The teacher's prompt: the rewritten messages through the chat template; without a context the
    student's own prompt ids (the row is computed but carries no distillation target)."""
    if context.messages is None:
        return prompt_ids
    ids = truncate(template_ids(tokenizer, context.messages, chat_template_kwargs), settings)
    return torch.tensor(ids, dtype=prompt_ids.dtype)


def teacher_rows(tokenizer: Any, prompts: torch.Tensor, responses: torch.Tensor, response_mask: torch.Tensor,
                 contexts: Sequence[TeacherContext], settings: RepromptSettings,
                 chat_template_kwargs: Mapping[str, Any] | None = None,
                 per_response: Mapping[str, torch.Tensor] | None = None) -> tuple[TensorDict, list[dict[str, int]]]:
    """Per-sample teacher inputs (nested fields, plus any per-response-token `per_response` field such as the
    student's top-K ids) and their TransferQueue tags."""
    prompt_rows, response_rows, mask_rows = per_sample(prompts), per_sample(responses), per_sample(response_mask)
    if not len(prompt_rows) == len(response_rows) == len(mask_rows) == len(contexts):
        raise BatchError(f"{len(prompt_rows)} prompts, {len(response_rows)} responses, {len(mask_rows)} response "
                         f"masks and {len(contexts)} teacher contexts: one of each per sample is needed")
    teacher_prompts = [teacher_prompt_ids(tokenizer, prompt, context, settings, chat_template_kwargs or {})
                       for prompt, context in zip(prompt_rows, contexts, strict=True)]
    input_ids = [torch.cat([prompt, response]) for prompt, response in zip(teacher_prompts, response_rows,
                                                                           strict=True)]
    fields = {"prompts": nested(teacher_prompts), "responses": nested(response_rows),
              "response_mask": nested(mask_rows), "loss_mask": nested(mask_rows), "input_ids": nested(input_ids),
              "position_ids": nested([torch.arange(len(ids)) for ids in input_ids]), **(per_response or {})}
    tags = [{"prompt_len": len(p), "response_len": len(r), "seq_len": len(p) + len(r)}
            for p, r in zip(teacher_prompts, response_rows, strict=True)]
    return TensorDict(fields, batch_size=[len(input_ids)]), tags


def response_columns(output: TensorDict, keys: list[str], response_mask: torch.Tensor, dtype: torch.dtype
                     ) -> torch.Tensor:
    """Per-position output keys (one value per token each) -> per sample (R_i, len(keys)) at the positions
    that predict the response tokens."""
    missing = [key for key in keys if key not in output.keys()]  # noqa: SIM118 - TensorDict
    if missing:
        raise BatchError(f"the forward returned no {missing[:2]}...: the composer loss must be the actor's loss "
                         "(set once by the composer trainer) and use_fused_kernels must be off")
    columns = [response_from_nested(output[key], response_mask).values() for key in keys]
    rows = torch.stack(columns, dim=-1).to(dtype)
    return nested(list(rows.split(response_mask.offsets().diff().tolist())))


def response_topk(output: TensorDict, response_mask: torch.Tensor, top_k: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher pass's top-K keys -> per-sample (R_i, K) ids (long) and log-probs (float32)."""
    id_keys, value_keys = topk_keys(top_k)
    return (response_columns(output, id_keys, response_mask, torch.long),
            response_columns(output, value_keys, response_mask, torch.float32))


def response_sampled(output: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """For the sampled_token support: the response tokens and the teacher's log-prob of each, per sample
    (R_i, 1), from VeRL's own `log_probs` output of the teacher forward."""
    if "log_probs" not in output.keys():  # noqa: SIM118 - TensorDict
        raise BatchError("the teacher pass returned no log_probs; VeRL computes them unless distillation_only is set")
    response_mask = output["response_mask"]
    log_probs = response_from_nested(output["log_probs"], response_mask)
    ids = [row.unsqueeze(-1) for row in output["responses"].unbind()]
    return nested(ids), nested([row.float().unsqueeze(-1) for row in log_probs.unbind()])


def student_fields(ids: torch.Tensor, log_probs: torch.Tensor, response_mask: torch.Tensor,
                   targeted: Sequence[bool]) -> TensorDict:
    """What the update batch needs: the teacher's top-K per response token and the self-distillation mask."""
    masks = [row * int(flag) for row, flag in zip(per_sample(response_mask), targeted, strict=True)]
    return TensorDict({TEACHER_IDS: ids, TEACHER_LOG_PROBS: log_probs, DISTILL_MASK: nested(masks)},
                      batch_size=[len(masks)])


def messages_of(raw_prompt: Any) -> list[list[Message]]:
    """VeRL's `raw_prompt` column (chat message lists; a NonTensorStack, list or numpy array) as lists."""
    rows = [list(row) for row in list(raw_prompt)]
    for index, row in enumerate(rows):
        if not all(isinstance(message, Mapping) and "role" in message for message in row):
            raise BatchError(f"raw_prompt of sample {index} is not a list of chat messages; the composer trainer "
                             "builds teacher contexts from the chat messages (VeRL's default data format)")
    return rows
