"""SWE-agent trajectories (`.traj`): one JSON session `{environment, trajectory[], history[], info}` per file.

The trace follows `history`, the chat the model saw. In 0.x an assistant message carries its command in
`action` (a line of the agent's shell interface) and the next user message is the command's observation; 1.x
adds OpenAI-style `tool_calls` and `role: tool` messages whose `tool_call_ids` (and `tool_calls`) may be
stored as their Python repr. Trajectory steps the history lacks (the last step's observation, or every step
when there is no history) are appended from `trajectory`. The format records no exit codes: an observation
with a traceback or an edit rejected for syntax errors is flagged `is_error`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import IngestLog, TraceFormat, head, load_json
from composer_core.traces.openai_messages import chat_message, text_of

NAME = "swe_agent"
FAILURE_MARKERS = ("Traceback (most recent call last):", "Your proposed edit has introduced new syntax error(s)")
COMMAND_DOC = re.compile(r"^(\w+):\n\s+docstring:", re.MULTILINE)
BAD_RECORD = (ValueError, TypeError, AttributeError, SyntaxError, MemoryError, RecursionError)


def detect(path: Path) -> bool:
    if path.suffix != ".traj":
        return False
    text = head(path)
    return text.lstrip().startswith("{") and '"trajectory"' in text


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    data = load_json(path, NAME, log)
    if data is None:
        return
    where = Provenance(format=NAME, file=str(path))
    if not _is_trajectory(data):
        log.reject_at(where, "not a SWE-agent trajectory: expected {trajectory[], history[]}", head(path, 500))
        return
    session = _Session(where, log, _commands(data))
    for index, raw in enumerate(data.get("history") or []):
        session.history_message(index, raw)
    for index, step in enumerate(data["trajectory"]):
        session.step(index, step)
    if not session.messages:
        log.reject_at(where, "no usable messages in the trajectory")
        return
    log.use()
    yield _trace(path, data, session)


def _is_trajectory(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("trajectory"), list) and \
        isinstance(data.get("history") or [], list)


@dataclass
class _Session:
    """Builds the messages: history first, then the trajectory steps the history does not hold."""

    where: Provenance
    log: IngestLog
    commands: list[str]
    messages: list[Message] = field(default_factory=list)
    actions: int = 0
    pending: ToolCall | None = None
    task: str | None = None

    def history_message(self, index: int, raw: Any) -> None:
        """One history message: a chat message, a 0.x action or observation, or a 1.x tool message."""
        self.log.record()
        record = self.where.at(f"history[{index}]")
        try:
            message = chat_message(_openai_shape(raw), record)
        except BAD_RECORD as error:
            self.log.reject_at(record, f"bad history message: {error}", raw)
            return
        self.log.use()
        demo = bool(raw.get("is_demo"))
        if message.role == "assistant" and not demo:
            if not message.tool_calls and isinstance(raw.get("action"), str):
                message = message.model_copy(update={"tool_calls": [self._call(raw["action"])]})
            self.pending = message.tool_calls[0] if message.tool_calls else None
            if self.pending is not None:
                self.actions += 1
        elif message.role == "user" and self.pending is not None and not demo:
            message = self._observation(record, message.content)
        elif message.role == "tool" and message.tool_result is not None:
            message = self._observation(record, message.tool_result.output, message.tool_result.call_id)
        else:
            self.pending = None
            if message.role == "user" and not demo and self.task is None:
                self.task = message.content
        self.messages.append(message)

    def step(self, index: int, raw: Any) -> None:
        """One trajectory step: skipped when the history holds it, else its action and observation appended."""
        self.log.record()
        record = self.where.at(f"trajectory[{index}]")
        if not isinstance(raw, dict):
            self.log.reject_at(record, f"bad trajectory step: not an object but a {type(raw).__name__}", raw)
            return
        if index < self.actions - 1 or (index == self.actions - 1 and self.pending is None):
            self.log.skip("trajectory step already in history")
            return
        if index >= self.actions:
            action = raw.get("action")
            call = self._call(action) if isinstance(action, str) and action.strip() else None
            content = raw.get("response") or raw.get("thought") or ""
            self.messages.append(Message(role="assistant", content=str(content), tool_calls=[call] if call else [],
                                         provenance=record))
            self.pending = call
        if self.pending is not None:
            self.messages.append(self._observation(record, text_of(raw.get("observation"))))
        self.log.use()

    def _call(self, action: str) -> ToolCall:
        """A 0.x action: a documented interface command by its name, anything else a bash command line."""
        words = action.split(maxsplit=1)
        name = words[0] if words and words[0] in self.commands else "bash"
        return ToolCall(name=name, arguments={"command": action.strip()})

    def _observation(self, record: Provenance, output: str, call_id: str | None = None) -> Message:
        """A tool message answering the pending action."""
        name = self.pending.name if self.pending is not None else None
        self.pending = None
        failed = any(marker in output for marker in FAILURE_MARKERS)
        return Message(role="tool", tool_result=ToolResult(call_id=call_id, name=name, output=output, is_error=failed),
                       provenance=record)


def _openai_shape(raw: Any) -> dict[str, Any]:
    """A history message in the OpenAI shape `chat_message` reads (tool calls and ids parsed from repr text)."""
    if not isinstance(raw, dict):
        raise ValueError(f"not an object but a {type(raw).__name__}")
    shaped = {"role": raw.get("role"), "content": raw.get("content")}
    if raw.get("tool_calls"):
        shaped["tool_calls"] = _listed(raw["tool_calls"])
    if raw.get("tool_call_ids"):
        ids = _listed(raw["tool_call_ids"])
        shaped["tool_call_id"] = ids[0] if ids else None
    return shaped


def _listed(value: Any) -> list[Any]:
    """A list, or its JSON or Python-literal text (never evaluated as code)."""
    parsed = _literal(value)
    if not isinstance(parsed, list):
        raise ValueError(f"expected a list, got {str(value)[:80]!r}")
    return parsed


def _literal(value: Any) -> Any:
    """JSON or Python-literal text parsed with json / ast.literal_eval; other values as they are."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return ast.literal_eval(value.strip())


def _state(raw: Any) -> dict[str, Any] | None:
    """A step's `state`: a dict, JSON text (0.x) or a Python repr (1.x); None when it does not parse."""
    try:
        state = _literal(raw)
    except BAD_RECORD:
        return None
    return state if isinstance(state, dict) else None


def _mapping(value: Any) -> dict[str, Any]:
    """A dict, or JSON text of one (1.x may store `replay_config` as text); else empty."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _commands(data: dict[str, Any]) -> list[str]:
    """The interface commands documented in the system prompt (0.x) or the replay config (1.x)."""
    tools = _mapping(_mapping(data.get("replay_config")).get("agent")).get("tools")
    docs = _mapping(tools).get("command_docs")
    if not isinstance(docs, str):
        history = data.get("history") or [{}]
        first = history[0] if isinstance(history, list) and isinstance(history[0], dict) else {}
        docs = text_of(first.get("content")) if first.get("role") == "system" else ""
    return COMMAND_DOC.findall(docs)


def _trace(path: Path, data: dict[str, Any], session: _Session) -> Trace:
    info = _mapping(data.get("info"))
    steps = [step for step in data["trajectory"] if isinstance(step, dict)]
    states = [state for state in (_state(step.get("state")) for step in steps) if state is not None]
    model = _mapping(_mapping(_mapping(data.get("replay_config")).get("agent")).get("model")).get("name")
    used = [call.name for message in session.messages for call in message.tool_calls]
    meta = {"environment": data.get("environment"), "model_stats": info.get("model_stats"),
            "working_dir": states[0].get("working_dir") if states else None,
            "final_state": states[-1] if states else None}
    return Trace(trace_id=path.stem, format=NAME, source=str(path), messages=session.messages, task=session.task,
                 model=model if isinstance(model, str) else None,
                 tools=list(dict.fromkeys(session.commands + used)),
                 outcome={key: info[key] for key in ("exit_status", "submission") if key in info},
                 meta={key: value for key, value in meta.items() if value is not None})


FORMAT = TraceFormat(NAME, "SWE-agent .traj trajectories (0.x text commands, 1.x function calling)", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
