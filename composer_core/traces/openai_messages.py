"""OpenAI-style chat messages: JSONL, one session per line, as `{"messages": [...], "id"?, "tools"?}` or a
bare list of messages. The same message shape is embedded in several agent formats, so the conversion of
one message is shared from here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import (
    IngestLog,
    TraceFormat,
    head,
    jsonl_records,
    leading_json_objects,
    parse_arguments,
)

NAME = "openai_messages"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def text_of(content: Any) -> str:
    """Visible text of a content field: a string, or a list of parts whose text parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"))
    return str(content)


def chat_message(raw: dict[str, Any], where: Provenance) -> Message:
    """Convert one OpenAI-style message; raises ValueError naming the problem (the caller rejects it)."""
    given = raw.get("role")
    role = ROLES.get(given) if isinstance(given, str) else None
    if role is None:
        raise ValueError(f"unknown role {raw.get('role')!r}")
    calls = []
    for call in raw.get("tool_calls") or []:
        function = call.get("function") or {}
        if not function.get("name"):
            raise ValueError("tool call without a function name")
        calls.append(ToolCall(id=call.get("id"), name=function["name"],
                              arguments=parse_arguments(function.get("arguments"))))
    result = None
    if role == "tool":
        result = ToolResult(call_id=raw.get("tool_call_id"), name=raw.get("name"), output=text_of(raw.get("content")))
    thinking = raw.get("reasoning_content") or raw.get("thinking")
    return Message(role=role, content="" if result else text_of(raw.get("content")), thinking=thinking or None,
                   tool_calls=calls, tool_result=result, provenance=where)


def detect(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    objects = leading_json_objects(path)
    if objects:
        return any(isinstance(line.get("messages"), list) for line in objects)
    return head(path).lstrip().startswith("[{") and '"role"' in head(path, 512)


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    for where, value in jsonl_records(path, NAME, log, allow_arrays=True):
        trace = _session(value, where, log)
        if trace is not None:
            log.use()
            yield trace


def _session(value: dict[str, Any] | list[Any], where: Provenance, log: IngestLog) -> Trace | None:
    session = {"messages": value} if isinstance(value, list) else value
    if not isinstance(session.get("messages"), list):
        log.reject_at(where, "expected a list of messages or an object with 'messages'", value)
        return None
    messages = []
    for index, raw in enumerate(session["messages"]):
        record = where.at(f"messages[{index}]")
        try:
            messages.append(chat_message(raw, record))
        except (ValueError, AttributeError) as error:
            log.reject_at(record, f"bad message: {error}", raw)
            return None
    tools = [tool.get("function", tool).get("name", "") for tool in session.get("tools") or []
             if isinstance(tool, dict)]
    return Trace(trace_id=str(session.get("id") or f"{Path(where.file).stem}:{where.line}"), format=NAME,
                 source=where.file, messages=messages, tools=[name for name in tools if name])


FORMAT = TraceFormat(NAME, "OpenAI chat messages, one session per JSONL line", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
