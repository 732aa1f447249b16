"""Self-distillation teacher contexts: what the teacher sees that the student did not.

For each sample the teacher gets the student's prompt with its last user message rewritten to carry privileged
context: a successful sibling's solution (a demonstration), the reward function's feedback, and/or a hint.
Templating happens on the raw chat messages, never on decoded prompt ids (decoding templated ids leaks role
names and special tokens into the content, a known bug of one port). Framework-agnostic: each backend
adapter tokenises the contexts and lays the teacher rows out the way its engine expects.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from composer_core.errors import BatchError
from composer_core.strict_model import StrictModel

Message = dict[str, Any]
Source = Literal["demonstration", "feedback", "hint"]
Reason = Literal["demonstration", "feedback", "hint", "none"]
TruncationSide = Literal["left", "right"]

THINKING_BLOCK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)
THINKING_END = "</think>"
TEMPLATE_FIELDS = {
    "reprompt_template": {"prompt", "demonstration", "feedback", "hint"},
    "demonstration_template": {"demonstration"},
    "feedback_template": {"feedback"},
    "hint_template": {"hint"},
}


class RepromptSettings(StrictModel):
    """How teacher contexts are built and tokenised. Reference values (SDPO code and YAML, TRL's SDPOConfig)
    are named in each description; where they disagree the default follows the SDPO reference run."""

    success_reward_threshold: float = Field(
        0.5, description="a sibling is a demonstration when its reward >= this; SDPO YAML 0.5, TRL and the "
                         "SDPO dataclass 1.0 (identical for 0/1 rewards)")
    dont_reprompt_on_self_success: bool = Field(
        True, description="a sample never gets its own completion as demonstration (SDPO and TRL: True)")
    remove_thinking_from_demonstration: bool = Field(
        True, description="strip <think>...</think> (and a leading unclosed block ending in </think>) from "
                          "demonstrations (SDPO and TRL: True)")
    include_feedback: bool = Field(
        True, description="use the reward function's feedback strings (TRL include_environment_feedback: False)")
    feedback_only_without_solution: bool = Field(
        True, description="feedback only for samples without a demonstration (SDPO and TRL: True)")
    include_hints: bool = Field(True, description="use per-sample hints (Composer-style; no SDPO equivalent)")
    reprompt_template: str = Field(
        "{prompt}{demonstration}{feedback}{hint}\n\nCorrectly solve the original question.\n",
        description="the rewritten last user message; each paragraph field is empty when unused (SDPO/TRL "
                    "reprompt_template plus the hint field)")
    demonstration_template: str = Field(
        "\nCorrect solution:\n\n{demonstration}\n\n", description="SDPO/TRL solution_template")
    feedback_template: str = Field(
        "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}\n\n",
        description="SDPO/TRL feedback_template")
    hint_template: str = Field("\nHint:\n\n{hint}\n\n", description="the hint paragraph (composer-core's own)")
    max_reprompt_len: int = Field(10240, ge=1, description="teacher prompt tokens kept (SDPO and TRL: 10240)")
    truncation_side: TruncationSide = Field(
        "left", description="left: drop the oldest prompt tokens, keeping the generation prompt (TRL); right: "
                            "drop the newest (verl/SDPO), which can cut the instruction and assistant header")

    @field_validator(*TEMPLATE_FIELDS)
    @classmethod
    def _template_fields(cls, template: str, info: ValidationInfo) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        expected = TEMPLATE_FIELDS[info.field_name]
        if fields != expected:
            raise ValueError(f"{info.field_name} must use exactly the fields {sorted(expected)}, got {sorted(fields)}")
        return template


@dataclass(frozen=True)
class TeacherContext:
    """One sample's teacher messages (None: no privileged context) and what they contain, in template order."""

    messages: list[Message] | None
    sources: tuple[Source, ...] = ()

    @property
    def reason(self) -> Reason:
        """The main source: demonstration, else feedback, else hint; none without privileged context."""
        return self.sources[0] if self.sources else "none"


@dataclass(frozen=True)
class ContextCounts:
    """Samples of the batch by privileged context; one sample can count under several sources."""

    total: int
    with_demonstration: int
    with_feedback: int
    with_hint: int
    without_context: int

    def metrics(self, prefix: str = "self_distillation/") -> dict[str, float]:
        """Fractions of the batch, for logging; `reprompt_fraction` is the SD coverage by samples."""
        size = max(self.total, 1)
        return {
            f"{prefix}demonstration_fraction": self.with_demonstration / size,
            f"{prefix}feedback_fraction": self.with_feedback / size,
            f"{prefix}hint_fraction": self.with_hint / size,
            f"{prefix}reprompt_fraction": (self.total - self.without_context) / size,
        }


@dataclass(frozen=True)
class TeacherContexts:
    contexts: list[TeacherContext]
    counts: ContextCounts


def strip_thinking(text: str) -> str:
    """Drop `<think>...</think>` blocks, and everything up to a remaining `</think>` (a block opened in the
    generation prompt, as Qwen3-style templates do)."""
    text = THINKING_BLOCK.sub("", text)
    if THINKING_END in text:
        text = text.rsplit(THINKING_END, 1)[1]
    return text.strip()


def usable(text: str | None) -> bool:
    return isinstance(text, str) and text.strip() != ""


def message_text(message: Message) -> str:
    """A message's content as text; content-part lists may hold text parts only."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, Mapping) and part.get("type") == "text" for part in content):
        return "\n".join(part.get("text", "") for part in content)
    raise BatchError("teacher contexts need text message content (a string or text parts only); got "
                     f"{type(content).__name__} content with non-text parts")


def demonstrations(completions: Sequence[str], groups: Sequence[Hashable], rewards: Sequence[float],
                   settings: RepromptSettings) -> list[str | None]:
    """Per sample: the first successful sibling's completion (in batch order) with a non-empty text, or None.

    A sibling whose text is empty once thinking is stripped is skipped: it would give an empty demonstration.
    """
    texts = [strip_thinking(text) if settings.remove_thinking_from_demonstration else text.strip()
             for text in completions]
    groups = [group.item() if isinstance(group, torch.Tensor) else group for group in groups]  # hash by value
    successes: dict[Hashable, list[int]] = {}
    for index, (group, reward) in enumerate(zip(groups, rewards, strict=True)):
        if reward >= settings.success_reward_threshold and texts[index]:
            successes.setdefault(group, []).append(index)
    chosen: list[str | None] = []
    for index, group in enumerate(groups):
        siblings = [j for j in successes.get(group, []) if not (settings.dont_reprompt_on_self_success and j == index)]
        chosen.append(texts[siblings[0]] if siblings else None)
    return chosen


def teacher_messages(prompt: Sequence[Message], reprompt: Callable[[str], str]) -> list[Message]:
    """The prompt with its last user message's text replaced by `reprompt(text)`; every other message kept."""
    users = [index for index, message in enumerate(prompt) if message.get("role") == "user"]
    if not users:
        raise BatchError("a teacher context needs a user message in the prompt; got roles "
                         f"{[message.get('role') for message in prompt]}")
    messages = [dict(message) for message in prompt]
    messages[users[-1]]["content"] = reprompt(message_text(prompt[users[-1]]))
    return messages


def build_context(prompt: Sequence[Message], demonstration: str | None, feedback: str | None, hint: str | None,
                  settings: RepromptSettings) -> TeacherContext:
    """One sample's teacher context from the privileged texts it may use (None: not available)."""
    use_feedback = (settings.include_feedback and usable(feedback)
                    and not (settings.feedback_only_without_solution and demonstration is not None))
    use_hint = settings.include_hints and usable(hint)
    paragraphs: dict[Source, str] = {}
    if demonstration is not None:
        paragraphs["demonstration"] = settings.demonstration_template.format(demonstration=demonstration)
    if use_feedback:
        paragraphs["feedback"] = settings.feedback_template.format(feedback=feedback)
    if use_hint:
        paragraphs["hint"] = settings.hint_template.format(hint=hint)
    if not paragraphs:
        return TeacherContext(None)

    def reprompt(text: str) -> str:
        return settings.reprompt_template.format(prompt=text, demonstration=paragraphs.get("demonstration", ""),
                                                 feedback=paragraphs.get("feedback", ""),
                                                 hint=paragraphs.get("hint", ""))

    return TeacherContext(teacher_messages(prompt, reprompt), tuple(paragraphs))


def build_teacher_contexts(prompts: Sequence[Sequence[Message]], completions: Sequence[str],
                           groups: Sequence[Hashable], rewards: Sequence[float],
                           feedback: Sequence[str | None] | None = None, hints: Sequence[str | None] | None = None,
                           settings: RepromptSettings | None = None) -> TeacherContexts:
    """Teacher contexts of one generation batch.

    prompts are the raw chat message lists, completions the decoded completion texts (special tokens skipped),
    groups the group key of each sample (an int, string or 0-d tensor; samples of one prompt share it and
    demonstrations come from the same group only), rewards the sequence rewards; feedback and hints are
    per-sample strings or None. A sample whose context is None gets no distillation (its SD mask row is zero).
    """
    settings = settings or RepromptSettings()
    size = len(prompts)
    feedback = [None] * size if feedback is None else list(feedback)
    hints = [None] * size if hints is None else list(hints)
    lengths = {"completions": len(completions), "groups": len(groups), "rewards": len(rewards),
               "feedback": len(feedback), "hints": len(hints)}
    if any(length != size for length in lengths.values()):
        raise BatchError(f"every per-sample list needs one entry per prompt ({size}); got {lengths}")
    demos = demonstrations(completions, groups, [float(reward) for reward in rewards], settings)
    contexts = [build_context(*sample, settings) for sample in zip(prompts, demos, feedback, hints, strict=True)]
    counts = ContextCounts(
        total=size,
        with_demonstration=sum("demonstration" in context.sources for context in contexts),
        with_feedback=sum("feedback" in context.sources for context in contexts),
        with_hint=sum("hint" in context.sources for context in contexts),
        without_context=sum(context.messages is None for context in contexts),
    )
    return TeacherContexts(contexts, counts)


def truncate(ids: list[int], settings: RepromptSettings) -> list[int]:
    """Keep max_reprompt_len ids: the last ones (side "left") or the first ones (side "right")."""
    limit = settings.max_reprompt_len
    return ids[-limit:] if settings.truncation_side == "left" else ids[:limit]


def template_ids(tokenizer: Any, messages: Sequence[Message], chat_template_kwargs: Mapping[str, Any]) -> list[int]:
    """Chat-template token ids of the messages with the generation prompt (assistant header) appended."""
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                        return_dict=False, **chat_template_kwargs)
    return list(ids)


def batch_template_ids(tokenizer: Any, conversations: Sequence[Sequence[Message]],
                       chat_template_kwargs: Mapping[str, Any]) -> list[list[int]]:
    """`template_ids` of every conversation, each distinct one rendered once and all tokenised in one tokenizer
    call (siblings often share a teacher context: the same demonstration, or the unchanged prompt)."""
    keys = [repr(messages) for messages in conversations]
    firsts: dict[str, int] = {}  # a conversation's text form -> the index of its first occurrence
    for index, key in enumerate(keys):
        firsts.setdefault(key, index)
    if not firsts:
        return []
    slots = {key: slot for slot, key in enumerate(firsts)}
    unique = [list(conversations[index]) for index in firsts.values()]
    ids = tokenizer.apply_chat_template(unique, add_generation_prompt=True, tokenize=True, return_dict=False,
                                        **chat_template_kwargs)
    return [list(ids[slots[key]]) for key in keys]
