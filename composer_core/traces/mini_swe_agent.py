"""mini-swe-agent trajectories (`.traj.json`, one JSON session per file), in three versions:

* v2 (`trajectory_format: mini-swe-agent-1.1`): `{info, messages[], trajectory_format, instance_id?}`; messages
  are the model's own (OpenAI `tool_calls`, `role: tool`) plus an `extra` field (returncode, timestamp, actions)
  and a final `role: exit` message carrying the exit status;
* v1 (`trajectory_format: mini-swe-agent-1`): `{info, messages[], trajectory_format}`; the action is the one
  fenced bash block of an assistant message and its observation the next user message
  (`<returncode>N</returncode><output>...</output>`);
* legacy: a bare list of `{role, content}` messages, otherwise as v1.

A text action becomes a `bash` tool call with `{"command": ...}` and its observation a tool message with the
exit code; an assistant message with no or several bash blocks was rejected by the agent (format error), so
it has no call and the next user message stays a user message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import IngestLog, TraceFormat, head, load_json, parse_time, tail
from composer_core.traces.openai_messages import chat_message, text_of

NAME = "mini_swe_agent"
ACTION_BLOCK = re.compile(r"```(?:bash|mswea_bash_command)\s*\n(.*?)\n```", re.DOTALL)
RETURNCODE = re.compile(r"<returncode>\s*(-?\d+)\s*</returncode>")
TRAJECTORY_FORMAT = re.compile(r'"trajectory_format"\s*:\s*"mini-swe-agent')
LEGACY_START = re.compile(r'\[\s*\{\s*"role"\s*:\s*"system"')
TIMEOUT_MARKER = "timed out and has been killed"
DETECT_BYTES = 1 << 16
TAIL_BYTES = 4096  # `trajectory_format` is written after the messages
BAD_RECORD = (ValueError, TypeError, AttributeError)


def detect(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    text = head(path).lstrip()
    if text.startswith("{"):
        return '"mini_version"' in text or bool(TRAJECTORY_FORMAT.search(text + tail(path, TAIL_BYTES)))
    return bool(LEGACY_START.match(text)) and "<returncode>" in head(path, DETECT_BYTES)


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    data = load_json(path, NAME, log)
    if data is None:
        return
    where = Provenance(format=NAME, file=str(path))
    session = {"messages": data} if isinstance(data, list) else data
    if not isinstance(session, dict) or not isinstance(session.get("messages"), list):
        log.reject_at(where, "not a mini-swe-agent trajectory: expected a message list or {info, messages}",
                      head(path, 500))
        return
    builder = _Builder(where, log)
    builder.add_all(session["messages"])
    if not builder.messages:
        log.reject_at(where, "no usable messages in the trajectory")
        return
    log.use()
    yield _trace(path, session, builder)


@dataclass
class _Builder:
    """Converts messages in order, pairing a text action with the user message that reports its output."""

    where: Provenance
    log: IngestLog
    messages: list[Message] = field(default_factory=list)
    pending: ToolCall | None = None
    exit: dict[str, Any] = field(default_factory=dict)

    def add_all(self, raws: list[Any]) -> None:
        """Take every message: each is read, then used or rejected."""
        self.log.record(len(raws))
        used = 0
        for index, raw in enumerate(raws):
            used += self._add(index, raw)
        self.log.use(used)

    def _add(self, index: int, raw: Any) -> bool:
        """Take one message: False when it is rejected (the `exit` message is used for its outcome)."""
        record = self.where.at(f"messages[{index}]")
        extra = _extra(raw)
        if isinstance(raw, dict) and raw.get("role") == "exit":
            self.exit = extra
            return True
        try:
            message = self._convert(raw, extra, record)
        except BAD_RECORD as error:
            self.log.reject_at(record, f"bad message: {error}", raw)
            return False
        when = parse_time(extra.get("timestamp"))
        if when is not None:  # a fresh message: set in place, as a model_copy would
            message.timestamp = when
        self.messages.append(message)
        return True

    def _convert(self, raw: Any, extra: dict[str, Any], record: Provenance) -> Message:
        if not isinstance(raw, dict):
            raise ValueError(f"not an object but a {type(raw).__name__}")
        if raw.get("role") == "user" and self.pending is not None:
            call, self.pending = self.pending, None
            return Message(role="tool", tool_result=_result(extra, text_of(raw.get("content")), call.id, call.name),
                           provenance=record)
        message = chat_message(raw, record)
        self.pending = None
        if message.role == "assistant" and not message.tool_calls:
            calls = _text_actions(extra, message.content)
            if calls:  # the message is fresh: changed in place, as a model_copy would be
                self.pending = calls[0]
                message.tool_calls = calls
        elif message.tool_result is not None:
            old = message.tool_result
            message.tool_result = _result(extra, old.output, old.call_id, old.name)
        return message


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _extra(raw: Any) -> dict[str, Any]:
    """mini-swe-agent's own fields of a message (v2)."""
    return _dict(raw.get("extra")) if isinstance(raw, dict) else {}


def _text_actions(extra: dict[str, Any], content: str) -> list[ToolCall]:
    """The bash action of a text-based assistant message: v2's parsed `extra.actions`, else exactly one
    fenced bash block (the agent rejects a message with none or several, so it then has no call)."""
    actions = extra.get("actions")
    if isinstance(actions, list):
        commands = [action.get("command") for action in actions if isinstance(action, dict)]
    else:
        blocks = ACTION_BLOCK.findall(content)
        commands = blocks if len(blocks) == 1 else []
    return [ToolCall(name="bash", arguments={"command": command.strip()})
            for command in commands if isinstance(command, str)]


def _result(extra: dict[str, Any], output: str, call_id: str | None, name: str | None) -> ToolResult:
    """A tool result: the exit code from `extra.returncode` or `<returncode>`, an error when the agent recorded
    an exception (v2 `extra.exception_info`) or killed the command on a timeout."""
    code = extra.get("returncode")
    if not isinstance(code, int) or isinstance(code, bool):
        found = RETURNCODE.search(output)
        code = int(found.group(1)) if found else None
    failed = bool(extra.get("exception_info")) or TIMEOUT_MARKER in output
    return ToolResult(call_id=call_id, name=name or "bash", output=output, is_error=failed, exit_code=code)


def _trace(path: Path, session: dict[str, Any], builder: _Builder) -> Trace:
    info = _dict(session.get("info"))
    config = _dict(info.get("config"))
    model = _dict(config.get("model")).get("model_name")
    task = next((message.content for message in builder.messages if message.role == "user"), None)
    outcome = {key: info.get(key, builder.exit.get(key)) for key in ("exit_status", "submission")}
    meta = {"trajectory_format": session.get("trajectory_format", "legacy"), "model_stats": info.get("model_stats"),
            "cwd": _dict(config.get("environment")).get("cwd")}
    trace_id = session.get("instance_id") or path.name.removesuffix(".json").removesuffix(".traj")
    return Trace(trace_id=str(trace_id), format=NAME, source=str(path), messages=builder.messages, task=task,
                 model=model if isinstance(model, str) else None,
                 agent_version=str(info["mini_version"]) if info.get("mini_version") else None,
                 tools=list(dict.fromkeys(call.name for message in builder.messages for call in message.tool_calls)),
                 outcome={key: value for key, value in outcome.items() if value is not None},
                 meta={key: value for key, value in meta.items() if value is not None})


FORMAT = TraceFormat(NAME, "mini-swe-agent trajectories (v2 tool calls, v1 and legacy bash blocks)", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
