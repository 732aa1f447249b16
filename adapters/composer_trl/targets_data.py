"""`data.targets`: agent-trace self-distillation targets (Composer's targeted hint at an error turn) as token ids.

The targets file is the JSONL `composer-core traces targets` writes (one `SDTarget` per line). Each target's
student context (the trace up to the error turn) and hinted teacher context are rendered with the model's chat
template (`composer_trl.chat_rendering`, which renders tool messages and tool calls even where the template
refuses them) and tokenised once, before training. Contexts longer than the prompt limit lose their oldest
tokens, the leading system message kept; every target ends up used or skipped with a reason, and the counts
go into the run summary (`TargetsReport.summary`).

The prompt limit is `run.max_prompt_length`, else the model's positions minus `run.max_completion_length`; the
teacher's is also at most `distill.context.max_reprompt_len`. Off-policy targets keep at most
`run.max_completion_length` tokens of the trace's own target message (its start).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.traces.store import read_records
from composer_core.traces.targets import SDTarget
from composer_trl.chat_rendering import render_messages
from composer_trl.preference_mixer import common_prefix_length

Message = dict[str, Any]


class SkippedTarget(Exception):
    """A target that cannot be trained on; `reason` is the key it is counted under in the summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenizedTarget:
    """One usable target: its id, its student context as chat messages, the student and teacher prompt ids (the
    contexts rendered with the generation prompt, truncated) and, off-policy, the trace's target message ids."""

    target_id: str
    student_messages: list[Message]
    student_prompt: list[int]
    teacher_prompt: list[int]
    target: list[int] = field(default_factory=list)


@dataclass
class TargetsReport:
    """Where every target of the file went: used, or skipped by reason; how many contexts and target messages
    were cut to the limits; and, during training, how many target rows and tokens the steps trained on."""

    file: str
    mode: str
    prompt_limit: int
    total: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    flagged_empty_target: int = 0
    truncated: Counter[str] = field(default_factory=Counter)
    trained: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {"file": self.file, "mode": self.mode, "total": self.total, "used": self.used,
                "skipped": dict(self.skipped), "flagged_empty_target": self.flagged_empty_target,
                "prompt_limit": self.prompt_limit, "truncated": dict(self.truncated), "trained": dict(self.trained)}


@dataclass(frozen=True)
class Limits:
    """Token limits: student prompt, teacher prompt, and the off-policy target message."""

    prompt: int
    teacher_prompt: int
    target: int


def prompt_limits(config: ComposerConfig, model_positions: int | None) -> Limits:
    """The limits from the run settings and the model's positions (see the module docstring)."""
    run = config.run
    if run.max_prompt_length is not None:
        prompt = run.max_prompt_length
    elif model_positions is None:
        raise ConfigError("data.targets: the model's config gives no max_position_embeddings, so the agent-trace "
                          "contexts cannot be fitted to it; set run.max_prompt_length")
    else:
        prompt = model_positions - run.max_completion_length
        if prompt < 1:
            raise ConfigError(f"run.max_completion_length={run.max_completion_length} leaves no room for a prompt in "
                              f"the model's {model_positions} positions; lower it")
    return Limits(prompt, min(prompt, config.distill.reprompt().max_reprompt_len), run.max_completion_length)


def token_ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    """The ids of `messages` rendered by composer_trl.chat_rendering (the template's special tokens are in the
    text, so none are added)."""
    text = render_messages(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_left(tokenizer: PreTrainedTokenizerBase, messages: list[Message], ids: list[int], limit: int
             ) -> tuple[list[int], bool]:
    """`ids` (the rendering of `messages`) cut to `limit` by dropping its oldest tokens, keeping the rendering of
    a leading system message; whether anything was cut. A system message that alone fills the limit skips."""
    if len(ids) <= limit:
        return ids, False
    kept: list[int] = []
    if messages and messages[0].get("role") == "system":
        kept = ids[:common_prefix_length(token_ids(tokenizer, messages[:1], False), ids)]
        if len(kept) >= limit:
            raise SkippedTarget("system_message_fills_prompt_limit")
    return kept + ids[len(ids) - (limit - len(kept)):], True


def tokenize_target(tokenizer: PreTrainedTokenizerBase, target: SDTarget, limits: Limits, off_policy: bool,
                    report: TargetsReport) -> TokenizedTarget:
    """One target's ids; raises SkippedTarget when it cannot be used; counts what was cut in a used target."""
    if off_policy and target.empty_target:
        raise SkippedTarget("empty_target")
    student = token_ids(tokenizer, target.student_context, True)
    teacher = token_ids(tokenizer, target.teacher_context, True)
    message: list[int] = []
    if off_policy:
        full = token_ids(tokenizer, [*target.student_context, target.target], False)
        shared = common_prefix_length(student, full)
        message = full[shared:]
        # a template that renders the generation prompt differently from a past assistant turn's opening: both
        # prompts end with the same generation prompt, so both lose its diverging tail
        diverged = len(student) - shared
        student, teacher = full[:shared], teacher[:len(teacher) - diverged]
        if not message:
            raise SkippedTarget("no_target_tokens")
    student, cut_student = fit_left(tokenizer, target.student_context, student, limits.prompt)
    teacher, cut_teacher = fit_left(tokenizer, target.teacher_context, teacher, limits.teacher_prompt)
    report.truncated["student_context"] += cut_student
    report.truncated["teacher_context"] += cut_teacher
    report.truncated["target_message"] += len(message) > limits.target
    message = message[:limits.target]
    return TokenizedTarget(target.target_id, target.student_context, student, teacher, message)


def target_records(path: str) -> list[SDTarget]:
    """The records of a targets file; a missing or empty file, or one of another kind, is a ConfigError naming it
    (checked before a run's output folder is made)."""
    records = list(read_records(path, SDTarget, "data.targets file"))
    if not records:
        raise ConfigError(f"data.targets={path} holds no targets: write them with `composer-core traces targets "
                          "TRACES.jsonl --out TARGETS.jsonl` (a trace set without error turns gives none)")
    return records


def read_targets(config: ComposerConfig, tokenizer: PreTrainedTokenizerBase, model_positions: int | None
                 ) -> tuple[list[TokenizedTarget], TargetsReport]:
    """Every target of `data.targets`, tokenised, with the report of what was used and skipped. An empty file, a
    file of another kind, or one with no usable target is a ConfigError naming it."""
    path = config.data.targets
    assert path is not None
    limits = prompt_limits(config, model_positions)
    off_policy = config.data.targets_mode == "off_policy"
    report = TargetsReport(file=str(Path(path)), mode=config.data.targets_mode, prompt_limit=limits.prompt)
    usable: list[TokenizedTarget] = []
    for target in target_records(path):
        report.total += 1
        report.flagged_empty_target += target.empty_target
        try:
            usable.append(tokenize_target(tokenizer, target, limits, off_policy, report))
        except SkippedTarget as skipped:
            report.skipped[skipped.reason] += 1
    report.used = len(usable)
    if not usable:
        raise ConfigError(f"data.targets={path}: none of its {report.total} targets can be trained on (skipped: "
                          f"{dict(report.skipped)}, prompt limit {limits.prompt} tokens); raise run.max_prompt_length "
                          "or use a model with a longer context")
    return usable, report
