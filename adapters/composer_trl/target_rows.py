"""On-policy agent-trace targets (`data.targets_mode: on_policy`, the SDPO form) as GRPO prompt rows.

Each target is one row of the training data set whose `sd_target` column holds its index (None on the RL rows).
Its `prompt` column is the student context reduced to roles and text (for TRL's logs; the data set's schema cannot
hold every message's tool calls), while the prompt the student generates from is the full context's tokens,
rendered by `composer_trl.targets_data`. The teacher, the same model's distill.teacher weights, scores the
student's turn under the hinted teacher context, and the distillation mask covers the generated turn.

Target rows have no verifiable reward: the reward functions never see them (they get None, TRL's "not scorable"),
their advantage is set to zero and they are left out of the policy channel's mask and token counts, so the policy
loss ignores them; the number of rows this applies to is logged (composer/targets/rows) and summed in the summary.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Dataset, Features, Value, concatenate_datasets

from composer_core.errors import ConfigError
from composer_core.selfteach import (
    Message,
    RepromptSettings,
    TeacherContext,
    batch_template_ids,
    message_text,
    truncate,
)
from composer_trl.targets_data import TargetsReport, TokenizedTarget
from composer_trl.teacher_context import TeacherBatch, left_padded_teacher_batch, pad_id, prefix_key

TARGET_COLUMN = "sd_target"
TRL_LOGGER = "trl.trainer.grpo_trainer"
ALL_NONE_WARNING = "All reward functions returned None"

TokenizePrompts = Callable[[list[Any]], tuple[list[list[int]], Any, dict[str, Any]]]


def prompt_projection(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The student context as role/text pairs (tool calls left out): what the data set and TRL's logs hold."""
    return [{"role": str(message.get("role")),
             "content": "" if message.get("content") is None else message_text(message)} for message in messages]


def with_target_rows(dataset: Dataset | None, targets: Sequence[TokenizedTarget]) -> Dataset:
    """The RL data set with one row per target appended (the targets alone when there is no RL data); every other
    column of a target row is None."""
    rows = [{"prompt": prompt_projection(target.student_messages), TARGET_COLUMN: index}
            for index, target in enumerate(targets)]
    if dataset is None:
        return Dataset.from_list(rows, features=Features({"prompt": [{"role": Value("string"),
                                                                      "content": Value("string")}],
                                                          TARGET_COLUMN: Value("int64")}))
    if TARGET_COLUMN in dataset.column_names:
        raise ConfigError(f"the training data has a column {TARGET_COLUMN!r}, which data.targets uses to mark its "
                          "rows; rename that column")
    if len(dataset) and not isinstance(dataset[0]["prompt"], list):
        raise ConfigError("data.targets (on_policy) adds chat-message prompts, but the training data's prompts are "
                          "plain strings: give chat-message prompts (lists of {role, content}) or use "
                          "data.targets_mode=off_policy")
    features = Features({**dataset.features, TARGET_COLUMN: Value("int64")})
    filled = [{**dict.fromkeys(dataset.column_names), **row} for row in rows]
    marked = dataset.add_column(TARGET_COLUMN, [None] * len(dataset), feature=Value("int64"))
    return concatenate_datasets([marked, Dataset.from_list(filled, features=features)])


def keep_unless_target_row_warning(record: logging.LogRecord) -> bool:
    """A logging filter: drops TRL's warning that every reward function returned None when the row it names is a
    target row (those have no reward by design); the warning about an RL row is kept."""
    message = record.getMessage()
    return ALL_NONE_WARNING not in message or f"'{TARGET_COLUMN}': None" in message


class OnPolicyTargets:
    """What ComposerGRPOTrainer needs for target rows: their prompt and teacher tokens, reward functions that skip
    them, their row mask, and counts for the summary (`report.trained`)."""

    def __init__(self, targets: list[TokenizedTarget], report: TargetsReport) -> None:
        self.targets = targets
        self.report = report
        self.batch: list[TokenizedTarget | None] = []
        logging.getLogger(TRL_LOGGER).addFilter(keep_unless_target_row_warning)  # added once however often called

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a training data set without the target rows (JobTargets.joined adds them)."""
        if TARGET_COLUMN not in (getattr(dataset, "column_names", None) or []):
            raise ConfigError(f"on-policy targets were given but the training data set has no {TARGET_COLUMN!r} "
                              "column: pass the data set JobTargets.joined returns")

    def begin_batch(self, inputs: Sequence[dict[str, Any]]) -> None:
        """Note which rows of the generation batch about to be scored are targets."""
        self.batch = [None if row.get(TARGET_COLUMN) is None else self.targets[row[TARGET_COLUMN]] for row in inputs]

    def row_mask(self, device: torch.device) -> torch.Tensor:
        """(B,) bool: the target rows of the current batch."""
        return torch.tensor([target is not None for target in self.batch], dtype=torch.bool, device=device)

    def tokenize_prompts(self, prompts: list[Any], tokenize_rest: TokenizePrompts
                         ) -> tuple[list[list[int]], Any, dict[str, Any]]:
        """Prompt ids of the batch: the target rows' rendered student contexts, the other rows through
        `tokenize_rest` (TRL's own tokenisation)."""
        if len(prompts) != len(self.batch):
            raise ConfigError(f"{len(prompts)} prompts but {len(self.batch)} rows were noted for this batch")
        rest = [index for index, target in enumerate(self.batch) if target is None]
        ids: list[list[int]] = [target.student_prompt if target is not None else [] for target in self.batch]
        images, fields = None, {}
        if rest:
            rest_ids, images, fields = tokenize_rest([prompts[index] for index in rest])
            if images is not None or fields:
                raise ConfigError("data.targets (on_policy) cannot be mixed with image prompts")
            for index, row_ids in zip(rest, rest_ids, strict=True):
                ids[index] = list(row_ids)
        return ids, images, fields

    def wrap_rewards(self, reward_funcs: Any) -> Any:
        """The reward functions, each called on the RL rows only and answering None for target rows."""
        if reward_funcs is None:
            return None
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        wrapped = [skip_target_rows(func) if callable(func) and not hasattr(func, "forward") else func
                   for func in funcs]
        return wrapped if isinstance(reward_funcs, list) else wrapped[0]

    def count(self, rows: torch.Tensor, completion_mask: torch.Tensor, sd_mask: torch.Tensor | None
              ) -> dict[str, float]:
        """Metrics of the target rows of a scored batch (rows: their (B,) mask), added to the summary's totals."""
        tokens = float(completion_mask[rows].sum())
        metrics = {"composer/targets/rows": float(rows.sum()), "composer/targets/completion_tokens": tokens}
        if sd_mask is not None:
            distilled = float(sd_mask[rows].sum())
            metrics["composer/targets/sd_tokens"] = distilled
            metrics["composer/targets/coverage"] = distilled / max(tokens, 1.0)
        for name in ("rows", "sd_tokens"):
            self.report.trained[name] += int(metrics.get(f"composer/targets/{name}", 0))
        return metrics

    def teacher_batch(self, tokenizer: Any, prompts: Sequence[Sequence[Message]],
                      contexts: Sequence[TeacherContext | None], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, settings: RepromptSettings,
                      chat_template_kwargs: dict[str, Any]) -> TeacherBatch:
        """Teacher rows laid out as composer_trl.teacher_context lays them out: target rows get their hinted teacher
        context (always distilled), the other rows their `contexts` entry (None: no privileged context)."""
        own = [index for index, target in enumerate(self.batch) if target is None]
        messages = [teacher_messages_or_prompt(prompts[index], contexts[index]) for index in own]
        rows: list[list[int]] = [target.teacher_prompt if target is not None else [] for target in self.batch]
        for index, ids in zip(own, batch_template_ids(tokenizer, messages, chat_template_kwargs), strict=True):
            rows[index] = truncate(ids, settings)
        distilled = [target is not None or (context is not None and context.messages is not None)
                     for context, target in zip(contexts, self.batch, strict=True)]
        return left_padded_teacher_batch(rows, distilled, completion_ids, completion_mask, pad_id(tokenizer),
                                         prefix_keys=[prefix_key(prompt, context) for prompt, context
                                                      in zip(prompts, contexts, strict=True)])


def teacher_messages_or_prompt(prompt: Sequence[Message], context: TeacherContext | None) -> Sequence[Message]:
    """An RL row's teacher messages, or its own prompt when it has no privileged context."""
    return context.messages if context is not None and context.messages is not None else prompt


def skip_target_rows(func: Callable[..., Sequence[Any]]) -> Callable[..., list[Any]]:
    """`func` called on the rows whose sd_target is None (its per-row arguments cut to them), None for the others;
    the sd_target column is not passed on."""

    @functools.wraps(func)
    def scored(*args: Any, **kwargs: Any) -> list[Any]:
        marks = kwargs.pop(TARGET_COLUMN, None)
        if marks is None:
            return list(func(*args, **kwargs))
        keep = [index for index, mark in enumerate(marks) if mark is None]
        results: list[Any] = [None] * len(marks)
        if keep:
            rows = {key: [value[index] for index in keep] if isinstance(value, list) and len(value) == len(marks)
                    else value for key, value in kwargs.items()}
            for index, result in zip(keep, func(*args, **rows), strict=True):
                results[index] = result
        return results

    return scored
