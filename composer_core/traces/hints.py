"""Hints for self-distillation targets: layered from terse (1) to explicit (3), from pluggable providers.

The built-in `rules` provider writes hints from the failure alone (the tools on offer after an unknown
tool, the failing assertion after a test failure, ...). A plugin can register another provider through
the `register_hint_providers` hook, for example one that asks an LLM teacher to write the hint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Contract, ToolCall, Trace
from composer_core.traces.failures import ErrorTurn

LEVELS = (1, 2, 3)


class Hint(Contract):
    level: int = Field(ge=1, le=3)
    text: str
    provider: str


@dataclass(frozen=True)
class HintRequest:
    """What a provider may look at: the whole trace and the error turn to write a hint for."""

    trace: Trace
    turn: ErrorTurn

    @property
    def failed_call(self) -> ToolCall | None:
        target = self.trace.messages[self.turn.target_index]
        result = self.trace.messages[self.turn.failure_index].tool_result
        call_id = result.call_id if result else None
        for call in target.tool_calls:
            if call.id == call_id:
                return call
        return target.tool_calls[0] if target.tool_calls else None

    @property
    def tool(self) -> str:
        call = self.failed_call
        return call.name if call else (self.turn.failure.tool or "the tool")

    def available_tools(self) -> list[str]:
        """Tools the session offered; else those it used successfully (other than the failed one)."""
        if self.trace.tools:
            return sorted(set(self.trace.tools))
        used = {call.name for message in self.trace.messages for call in message.tool_calls}
        return sorted(used - {self.tool})


@dataclass(frozen=True)
class HintProvider:
    """A registered provider: `provide(request)` returns hints, at least one per level it supports."""

    name: str
    description: str
    provide: Callable[[HintRequest], list[Hint]]


def _layers(first: str, second: str, third: str) -> list[Hint]:
    """Three cumulative levels: each repeats the previous one and adds to it."""
    texts = (first, f"{first} {second}", f"{first} {second} {third}")
    return [Hint(level=level, text=text, provider="rules") for level, text in zip(LEVELS, texts, strict=True)]


def rule_hints(request: HintRequest) -> list[Hint]:
    """Hints from the failure kind and detail."""
    failure, tool = request.turn.failure, request.tool
    detail = failure.detail.rstrip(".")
    if failure.kind == "unknown_tool":
        tools = ", ".join(request.available_tools()) or "the tools listed in the system prompt"
        return _layers(f"`{tool}` is not an available tool.", f"Available tools: {tools}.",
                       "Call one of them with the arguments it expects.")
    if failure.kind == "permission_denied":
        return _layers("That action is not permitted here.", f"Using `{tool}` this way was denied.",
                       "Choose an action that reaches the goal without it, or ask the user.")
    if failure.kind == "edit_rejected":
        return _layers("This edit will not apply.", f"The tool reports: {detail}.",
                       "Re-read the file and copy the text to replace exactly, whitespace included.")
    if failure.kind == "test_failure":
        return _layers("The tests fail after this step.", f"Failing check: {detail}.",
                       "Fix the cause of that failure first, then rerun the failing test.")
    if failure.kind == "nonzero_exit":
        return _layers(f"This command fails (exit code {failure.exit_code}).", f"It reports: {detail}.",
                       "Check the command, its arguments and the working directory before running it.")
    return _layers(f"This call to `{tool}` fails.", f"The tool reports: {detail}.",
                   "Check its arguments against what the tool expects.")


BUILTIN_PROVIDERS = (HintProvider("rules", "rule-based hints from the failure kind and its message", rule_hints),)


@hookimpl
def register_hint_providers(register: Register) -> None:
    for provider in BUILTIN_PROVIDERS:
        register(provider)
