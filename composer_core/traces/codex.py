"""Codex CLI rollouts (`~/.codex/sessions/.../rollout-*.jsonl`), both on-disk forms, one session a file.

Envelope form (Codex 0.4x and later): every line is `{timestamp, type, payload}` with type session_meta,
turn_context, response_item, event_msg or compacted. Legacy form (mid 2025): a bare session header
`{id, timestamp, instructions, git?}` first, `{"record_type": "state"}` markers, and unwrapped response items.

Response items make the messages: `message` (developer -> system), `reasoning` (its summary, else its raw
text, is thinking), `function_call` / `custom_tool_call` / `local_shell_call` / `web_search_call` /
`tool_search_call` (tool calls) and their `*_output` items (tool messages). One model response (reasoning,
text, calls) becomes one assistant message. A shell call's exit code comes from its output: the legacy JSON
string `{output, metadata: {exit_code}}`, or the `Exit code: N` / `Process exited with code N` header.

`event_msg` lines repeat what response items already say, so each is skipped by kind; `exec_command_end`
still lends its exit code to a tool message that lacks one, and task_complete / turn_aborted are counted in
the outcome. session_meta and turn_context lines are used when they add session fields, else skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import (
    IngestLog,
    TraceFormat,
    jsonl_records,
    leading_json_objects,
    parse_arguments,
    parse_time,
)
from composer_core.traces.openai_messages import ROLES, text_of

NAME = "codex"
ENVELOPE_TYPES = frozenset({"session_meta", "turn_context", "response_item", "event_msg", "compacted"})
SKIPPED_TYPES = frozenset({"compacted", "world_state", "inter_agent_communication_metadata"})
LEGACY_HEADER_KEYS = ("instructions", "git", "originator", "cli_version")
CALL_TYPES = frozenset({"function_call", "custom_tool_call", "local_shell_call", "web_search_call",
                        "tool_search_call"})
OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output", "local_shell_call_output",
                          "tool_search_output"})
SKIPPED_ITEMS = frozenset({"ghost_snapshot", "image_generation_call", "agent_message", "compaction",
                           "compaction_summary"})
ITEM_TYPES = CALL_TYPES | OUTPUT_TYPES | SKIPPED_ITEMS | {"message", "reasoning"}
EXIT_CODE = re.compile(r"^(?:Exit code:|Process exited with code) (-?\d+)$", re.M)
CONTEXT_TAG = re.compile(r"\A\s*<([\w -]+)>.*</\1>\s*\Z", re.S)


@dataclass
class _Rollout:
    """What one rollout has said so far."""

    path: Path
    log: IngestLog
    messages: list[Message] = field(default_factory=list)
    open_turn: Message | None = None
    call_names: dict[str, str] = field(default_factory=dict)
    results: dict[str, ToolResult] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, int] = field(default_factory=dict)
    task: str | None = None
    first_time: datetime | None = None
    last_time: datetime | None = None


def detect(path: Path) -> bool:
    """A `.jsonl` whose leading lines hold a Codex envelope line or a legacy session header."""
    return path.suffix == ".jsonl" and any(_is_codex_line(line) for line in leading_json_objects(path))


def _is_codex_line(line: dict[str, Any]) -> bool:
    if "type" in line:
        kind = line["type"]
        return isinstance(kind, str) and kind in ENVELOPE_TYPES and isinstance(line.get("payload"), dict)
    return "id" in line and "timestamp" in line and any(key in line for key in LEGACY_HEADER_KEYS)


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    """Stream one rollout into one trace (none when it holds no message)."""
    rollout = _Rollout(path, log)
    for where, line in jsonl_records(path, NAME, log):
        when = parse_time(line.get("timestamp"))
        if when is not None:
            rollout.first_time = rollout.first_time or when
            rollout.last_time = when
        try:
            _dispatch(rollout, line, where, when)
        except (ValueError, TypeError, AttributeError) as error:
            log.reject_at(where, f"bad {line.get('type')} line: {error}", json.dumps(line))
    if rollout.messages:
        yield _trace(rollout)


def _dispatch(rollout: _Rollout, line: dict[str, Any], where: Provenance, when: datetime | None) -> None:
    """Route one line by form and type; an unknown type is rejected."""
    kind = line.get("type")
    log = rollout.log
    if "record_type" in line:
        log.skip(f"record_type:{line['record_type']}")
    elif kind is None and "id" in line and "timestamp" in line:
        _header(rollout, line, {"id", "timestamp", "cwd", "git", "originator", "cli_version"})
    elif "payload" in line:
        _envelope(rollout, line, where, when)
    elif kind in ITEM_TYPES:
        _item(rollout, line, where, when)
    else:
        log.reject_at(where, f"unknown event type '{kind}'", json.dumps(line))


def _envelope(rollout: _Rollout, line: dict[str, Any], where: Provenance, when: datetime | None) -> None:
    """One `{timestamp, type, payload}` line."""
    kind, payload, log = line.get("type"), line["payload"], rollout.log
    if not isinstance(payload, dict):
        raise ValueError(f"payload is a {type(payload).__name__}, not an object")
    if kind == "session_meta":
        _header(rollout, payload, {"id", "timestamp", "cwd", "originator", "cli_version", "source", "git",
                                   "model_provider", "model"})
    elif kind == "turn_context":
        _header(rollout, payload, {"model", "cwd"})
    elif kind == "response_item":
        _item(rollout, payload, where, when)
    elif kind == "event_msg":
        _event(rollout, payload)
    elif kind in SKIPPED_TYPES:
        log.skip(str(kind))
    else:
        log.reject_at(where, f"unknown event type '{kind}'", json.dumps(line))


def _header(rollout: _Rollout, fields: dict[str, Any], wanted: set[str]) -> None:
    """Session fields from a header-like line (first value wins; text, or an object for `git`): used if it
    adds one, else skipped."""
    new = {key: fields[key] for key in wanted
           if fields.get(key) and key not in rollout.header and isinstance(fields[key], dict if key == "git" else str)}
    rollout.header.update(new)
    if new:
        rollout.log.use()
    else:
        rollout.log.skip("session_meta/turn_context (nothing new)")


def _event(rollout: _Rollout, payload: dict[str, Any]) -> None:
    """Event messages duplicate response items: skipped by kind, keeping exit codes and turn outcomes."""
    kind = str(payload.get("type"))
    call_id, exit_code = payload.get("call_id"), payload.get("exit_code")
    if kind == "exec_command_end" and isinstance(call_id, str) and isinstance(exit_code, int):
        rollout.exit_codes[call_id] = exit_code
        result = rollout.results.get(call_id)
        if result is not None and result.exit_code is None:
            result.exit_code = exit_code
    elif kind in ("task_complete", "turn_aborted"):
        rollout.outcome[kind] = rollout.outcome.get(kind, 0) + 1
    rollout.log.skip(f"event_msg:{kind}")


def _item(rollout: _Rollout, item: dict[str, Any], where: Provenance, when: datetime | None) -> None:
    """One response item: a message, reasoning, a tool call or a tool output."""
    kind, log = item.get("type"), rollout.log
    if kind == "message":
        _message(rollout, item, where, when)
    elif kind == "reasoning":
        thinking = _reasoning(item)
        if not thinking:
            log.skip("response_item:reasoning (encrypted only)")
            return
        turn = _turn(rollout, where, when, fresh=not _only_thinking(rollout.open_turn))
        turn.thinking = "\n\n".join(part for part in (turn.thinking, thinking) if part)
    elif kind in CALL_TYPES:
        call = _call(rollout, item)
        _turn(rollout, where, when).tool_calls.append(call)
    elif kind in OUTPUT_TYPES:
        _output(rollout, item, where, when)
    elif kind in SKIPPED_ITEMS:
        log.skip(f"response_item:{kind}")
        return
    else:
        log.reject_at(where, f"unknown response item type '{kind}'", json.dumps(item))
        return
    log.use()


def _message(rollout: _Rollout, item: dict[str, Any], where: Provenance, when: datetime | None) -> None:
    """A message item; assistant text joins the open turn unless that already has text."""
    role = ROLES.get(str(item.get("role")))
    if role is None or role == "tool":
        raise ValueError(f"unknown message role {item.get('role')!r}")
    text = text_of(item.get("content"))
    if role == "assistant":
        turn = _turn(rollout, where, when, fresh=bool(rollout.open_turn and rollout.open_turn.content))
        turn.content = text
        return
    rollout.open_turn = None
    rollout.messages.append(Message(role=role, content=text, timestamp=when, provenance=where))
    if role == "user" and rollout.task is None and not _is_context(text):
        rollout.task = text


def _turn(rollout: _Rollout, where: Provenance, when: datetime | None, *, fresh: bool = False) -> Message:
    """The open assistant message of the current model response, opened here when there is none."""
    if rollout.open_turn is None or fresh:
        rollout.open_turn = Message(role="assistant", timestamp=when, provenance=where)
        rollout.messages.append(rollout.open_turn)
    return rollout.open_turn


def _only_thinking(turn: Message | None) -> bool:
    """Whether the open turn holds thinking and nothing else (a second reasoning item joins it)."""
    return turn is not None and not turn.content and not turn.tool_calls


def _reasoning(item: dict[str, Any]) -> str:
    """A reasoning item's readable text: its summary, else its raw reasoning text."""
    parts = [part.get("text", "") for part in item.get("summary") or [] if isinstance(part, dict)]
    if not any(parts):
        parts = [part.get("text", "") for part in item.get("content") or [] if isinstance(part, dict)]
    return "\n\n".join(part for part in parts if part)


def _call(rollout: _Rollout, item: dict[str, Any]) -> ToolCall:
    """A tool-call item as a ToolCall (built-in calls without a name get their item type's)."""
    kind = str(item["type"])
    names = {"local_shell_call": "local_shell", "web_search_call": "web_search", "tool_search_call": "tool_search"}
    name = item.get("name") or names.get(kind)
    if not name:
        raise ValueError(f"{kind} without a name")
    raw = item.get("arguments") if "arguments" in item else item.get("input", item.get("action"))
    call = ToolCall(id=item.get("call_id") or item.get("id"), name=name, arguments=parse_arguments(raw))
    if call.id:
        rollout.call_names[call.id] = name
    return call


def _output(rollout: _Rollout, item: dict[str, Any], where: Provenance, when: datetime | None) -> None:
    """A tool-output item as a tool message; closes the open turn."""
    call_id = item.get("call_id")
    if item.get("type") == "tool_search_output":
        output, exit_code = json.dumps(item.get("tools")), None
    else:
        output, exit_code = _output_text(item.get("output"))
    if exit_code is None and call_id in rollout.exit_codes:
        exit_code = rollout.exit_codes[call_id]
    result = ToolResult(call_id=call_id, name=rollout.call_names.get(call_id or ""), output=output,
                        exit_code=exit_code)
    if call_id:
        rollout.results[call_id] = result
    rollout.open_turn = None
    rollout.messages.append(Message(role="tool", tool_result=result, timestamp=when, provenance=where))


def _output_text(raw: Any) -> tuple[str, int | None]:
    """The text and exit code of a tool output: a JSON string with metadata, a headed string, or text parts
    (image parts are left out)."""
    if isinstance(raw, dict):
        raw = [raw]
    if isinstance(raw, list):
        return text_of(raw), None
    if not isinstance(raw, str):
        return ("" if raw is None else json.dumps(raw)), None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("output"), str):
        exit_code = (value.get("metadata") or {}).get("exit_code")
        return value["output"], exit_code if isinstance(exit_code, int) else None
    match = EXIT_CODE.search(raw[:1000])
    return raw, int(match.group(1)) if match else None


def _is_context(text: str) -> bool:
    """Whether a user message is injected context (environment, AGENTS.md, instructions), not a prompt."""
    return text.startswith("# AGENTS.md instructions") or CONTEXT_TAG.match(text) is not None


def _trace(rollout: _Rollout) -> Trace:
    """The Trace of one rollout."""
    header = rollout.header
    git = header.get("git") if isinstance(header.get("git"), dict) else {}
    meta = {"cwd": header.get("cwd"), "originator": header.get("originator"), "source": header.get("source"),
            "model_provider": header.get("model_provider"), "git_branch": git.get("branch"),
            "git_commit": git.get("commit_hash"), "ended_at": rollout.last_time}
    return Trace(trace_id=str(header.get("id") or rollout.path.stem), format=NAME, source=str(rollout.path),
                 messages=rollout.messages, task=rollout.task, model=header.get("model"),
                 agent_version=header.get("cli_version"),
                 started_at=parse_time(header.get("timestamp")) or rollout.first_time, outcome=dict(rollout.outcome),
                 meta={key: value for key, value in meta.items() if value not in (None, "")})


FORMAT = TraceFormat(NAME, "Codex CLI rollouts (JSONL; envelope and legacy forms)", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
