"""Self-distillation targets from traces: Composer 2.5's targeted RL with textual feedback.

For each error turn, the target is the assistant message whose call failed. The student context is the
trace before it; the teacher context is the same with a hint inserted just before the target; the
target message is what channel 2 trains on (its tokens scored by the policy under both contexts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from composer_core.errors import ConfigError
from composer_core.plugins import registries
from composer_core.traces.contracts import Contract, Message, Provenance, Trace
from composer_core.traces.failures import Failure, find_error_turns
from composer_core.traces.hints import Hint, HintRequest

HintRole = Literal["user", "system"]


class SDTarget(Contract):
    """One self-distillation target, ready for a trainer to apply its chat template to."""

    target_id: str
    trace_id: str
    target_index: int
    format: str
    failure: Failure
    hint: Hint
    hints: list[Hint]
    student_context: list[dict[str, Any]]
    teacher_context: list[dict[str, Any]]
    target: dict[str, Any]
    recovery: dict[str, Any]
    empty_target: bool
    provenance: Provenance


@dataclass
class TargetReport:
    """Counts of what target building found; empty targets are reported, never silently dropped, and error
    turns that give no target (no message before the target: nothing to distil or replay from) are counted."""

    traces: int = 0
    error_turns: int = 0
    no_context_turns: int = 0
    targets: int = 0
    empty_targets: int = 0
    thinking_only_targets: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {"traces": self.traces, "error_turns": self.error_turns, "no_context_turns": self.no_context_turns,
                "targets": self.targets,
                "empty_targets": self.empty_targets, "thinking_only_targets": self.thinking_only_targets,
                "by_kind": dict(self.by_kind)}


def is_thinking_only(message: Message) -> bool:
    return bool(message.thinking) and not message.content.strip() and not message.tool_calls


def build_targets(trace: Trace, report: TargetReport, *, provider: str = "rules", level: int = 2,
                  strip_thinking: bool = False, hint_role: HintRole = "user") -> Iterator[SDTarget]:
    """Targets of one trace. strip_thinking removes thinking from contexts and target; a target left with
    nothing to train on is still emitted, flagged `empty_target`, and counted. An error turn whose target is
    the trace's first message (its session's start was not recorded) has no student context, and a replay
    no prompt: it gives no target and is counted in `no_context_turns`."""
    hint_provider = registries().hint_providers.get(provider)
    report.traces += 1
    keep_thinking = not strip_thinking
    for turn in find_error_turns(trace):
        report.error_turns += 1
        if turn.target_index == 0:
            report.no_context_turns += 1
            continue
        hints = hint_provider.provide(HintRequest(trace, turn))
        chosen = next((hint for hint in hints if hint.level == level), None)
        if chosen is None:
            raise ConfigError(f"hint provider {provider!r} gave no level-{level} hint; levels given: "
                              f"{sorted(hint.level for hint in hints)}")
        message = trace.messages[turn.target_index]
        thinking_only = is_thinking_only(message)
        report.thinking_only_targets += thinking_only
        empty = thinking_only and strip_thinking
        report.empty_targets += empty
        report.targets += 1
        report.by_kind[turn.failure.kind] += 1
        context = [earlier.to_chat(include_thinking=keep_thinking) for earlier in trace.messages[:turn.target_index]]
        hint_message = {"role": hint_role, "content": f"Hint: {chosen.text}"}
        yield SDTarget(target_id=f"{trace.trace_id}:{turn.target_index}", trace_id=trace.trace_id,
                       target_index=turn.target_index, format=trace.format, failure=turn.failure, hint=chosen,
                       hints=hints,
                       student_context=context, teacher_context=[*context, hint_message],
                       target=message.to_chat(include_thinking=keep_thinking),
                       recovery=trace.messages[turn.recovery_index].to_chat(include_thinking=keep_thinking),
                       empty_target=empty, provenance=message.provenance)


def build_all_targets(traces: Iterable[Trace], report: TargetReport, **options: Any) -> Iterator[SDTarget]:
    for trace in traces:
        yield from build_targets(trace, report, **options)
