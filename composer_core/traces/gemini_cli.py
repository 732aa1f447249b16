"""Gemini CLI chat recordings (`~/.gemini/tmp/<project>/chats/session-*.json` or `.jsonl`).

The JSON form is one document `{sessionId, projectHash, startTime, lastUpdated, messages[]}`. The JSONL form
is an append log: a header line with the same session fields, then message records, `{"$set": {...}}`
metadata patches and `{"$rewindTo": id}` markers. A message record is rewritten in full whenever its tool
calls, results or tokens change, so a later record with a known id replaces the earlier one in place
(the earlier line is skipped as superseded); a rewind drops the target message and every later one (skipped
as rewound; a rewind to an unknown id is rejected, where Gemini CLI would clear the session). `$set`
metadata is applied; a `$set` of `messages` rewrites the model's context after compression and is not
applied to the transcript (skipped and counted).

Message types: user; gemini (or legacy `model` with `parts`) -> an assistant message whose `toolCalls`
become tool calls, each followed by a tool message with its result (status error or cancelled -> failed;
`Exit Code: N` in shell output -> exit code); info / error / warning are skipped by type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    load_json,
    parse_arguments,
    parse_time,
)

NAME = "gemini_cli"
SKIPPED_TYPES = frozenset({"info", "error", "warning"})
FAILED_STATUSES = frozenset({"error", "cancelled"})
DONE_STATUSES = FAILED_STATUSES | {"success"}
EXIT_CODE = re.compile(r"Exit Code: (-?\d+)")
SESSION_KEYS = (re.compile(r'"sessionId"\s*:'), re.compile(r'"projectHash"\s*:'))


@dataclass(slots=True)
class _Kept:
    """The current version of one message record, already converted: its messages (none for an info,
    error or warning record or an empty one, which are skipped as `kind`) and its model."""

    messages: list[Message]
    kind: str
    model: str | None


@dataclass
class _Recording:
    """The session fields and the current message records of one file, by message id in first-seen order."""

    path: Path
    log: IngestLog
    header: dict[str, Any] = field(default_factory=dict)
    records: dict[str, _Kept] = field(default_factory=dict)


def detect(path: Path) -> bool:
    """A `.json` document or a `.jsonl` header carrying both `sessionId` and `projectHash`."""
    suffix = path.suffix
    if suffix == ".jsonl":
        return any("sessionId" in line and "projectHash" in line and "type" not in line
                   for line in leading_json_objects(path))
    if suffix != ".json":
        return False
    text = head(path)
    return (text.lstrip().startswith("{") and '"sessionId"' in text and '"projectHash"' in text  # cheap first
            and all(key.search(text) for key in SESSION_KEYS))


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    """Read one recording (the JSONL form streamed line by line) into one trace."""
    recording = _Recording(path, log)
    if path.suffix == ".jsonl":
        _read_jsonl(recording)
    elif not _read_json(recording):
        return
    trace = _trace(recording)
    if trace.messages:
        yield trace


def _read_json(recording: _Recording) -> bool:
    """Load the JSON form; False (after one reject) when it is not a session document."""
    document = load_json(recording.path, NAME, recording.log)
    where = Provenance(format=NAME, file=str(recording.path))
    if document is None:
        return False
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        recording.log.reject_at(where, "not a Gemini CLI session: no 'messages' list", head(recording.path, 500))
        return False
    recording.log.use()
    recording.header = {key: value for key, value in document.items() if key != "messages"}
    records = document["messages"]
    recording.log.record(len(records))  # counted before any is kept: a reject is counted as read either way
    for index, record in enumerate(records):
        _keep(recording, where.at(f"messages[{index}]"), record)
    return True


def _read_jsonl(recording: _Recording) -> None:
    """Replay the JSONL form line by line: header, message records, `$set` and `$rewindTo`."""
    log = recording.log
    for where, line in jsonl_records(recording.path, NAME, log):
        if "$rewindTo" in line:
            _rewind(recording, where, line)
        elif "$set" in line:
            _patch(recording, where, line)
        elif "id" in line:
            _keep(recording, where, line)
        elif "sessionId" in line and "projectHash" in line:
            _header(recording, line)
        else:
            log.reject_at(where, "unknown record: not a header, message, $set or $rewindTo", json.dumps(line))


def _header(recording: _Recording, line: dict[str, Any]) -> None:
    """The header line (used); a repeated header only fills fields still missing (skipped)."""
    if "projectHash" in recording.header:
        recording.header = {**line, **recording.header}
        recording.log.skip("repeated header")
        return
    recording.header = {**recording.header, **line}
    recording.log.use()


def _keep(recording: _Recording, where: Provenance, record: Any) -> None:
    """Convert and keep a message record, replacing (and skipping) an earlier version of the same id in place;
    a record that does not convert is rejected and leaves any earlier version in place."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        recording.log.reject_at(where, "message record without a string 'id'", json.dumps(record))
        return
    kind = record.get("type")
    try:
        messages = [] if kind in SKIPPED_TYPES else _messages(record, kind, where)
    except (ValueError, TypeError, AttributeError) as error:
        recording.log.reject_at(where, f"bad message record: {error}", json.dumps(record))
        return
    message_id = record["id"]
    if message_id in recording.records:
        recording.log.skip("message superseded by a later record")
    model = record.get("model")
    recording.records[message_id] = _Kept(messages, str(kind), model if isinstance(model, str) else None)


def _rewind(recording: _Recording, where: Provenance, line: dict[str, Any]) -> None:
    """Drop the target message and every later one; a rewind to an unknown id is rejected."""
    ids = list(recording.records)
    target = line["$rewindTo"]
    if target not in ids:
        recording.log.reject_at(where, f"rewind to unknown message id {target!r}", json.dumps(line))
        return
    for message_id in ids[ids.index(target):]:
        del recording.records[message_id]
        recording.log.skip("message rewound")
    recording.log.skip("$rewindTo")


def _patch(recording: _Recording, where: Provenance, line: dict[str, Any]) -> None:
    """Apply a `$set` metadata patch; a `messages` rewrite is counted, not applied."""
    patch = line["$set"]
    if not isinstance(patch, dict):
        recording.log.reject_at(where, "$set is not an object", json.dumps(line))
        return
    recording.header.update({key: value for key, value in patch.items() if key != "messages"})
    recording.log.skip("$set messages (context rewrite, not applied)" if "messages" in patch else "$set")


def _messages(record: dict[str, Any], kind: Any, where: Provenance) -> list[Message]:
    """The messages of one record of type `kind`: a user message, or an assistant message and its tool results."""
    when = parse_time(record.get("timestamp"))
    if kind == "user":
        return [Message(role="user", content=_text(record.get("content")), timestamp=when, provenance=where)]
    if kind not in ("gemini", "model"):
        raise ValueError(f"unknown message type {kind!r}")
    calls, thoughts = record.get("toolCalls") or [], record.get("thoughts") or []
    if not isinstance(calls, list) or not isinstance(thoughts, list):
        raise ValueError("toolCalls and thoughts must be lists")
    thinking = "\n\n".join(filter(None, map(_thought, thoughts))) if thoughts else ""
    content = _text(record["content"] if "content" in record else record.get("parts"))
    if not (content or thinking or calls):
        return []
    messages = [Message(role="assistant", content=content, thinking=thinking or None, timestamp=when,
                        provenance=where, tool_calls=[_call(call) for call in calls])]
    for call in calls:
        if _finished(call):
            messages.append(Message(role="tool", tool_result=_result(call),
                                    timestamp=parse_time(call.get("timestamp")) or when, provenance=where))
    return messages


def _text(content: Any) -> str:
    """Text of a content field: a string or a list of parts (text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _thought(thought: Any) -> str:
    """One thought summary as text: its subject and description."""
    if not isinstance(thought, dict):
        return str(thought)
    return ": ".join([str(thought[key]) for key in ("subject", "description") if thought.get(key)])


def _call(call: dict[str, Any]) -> ToolCall:
    """A toolCalls entry as a ToolCall."""
    if not call.get("name"):
        raise ValueError("tool call without a name")
    return ToolCall(id=call.get("id"), name=call["name"], arguments=parse_arguments(call.get("args")))


def _finished(call: dict[str, Any]) -> bool:
    """Whether a tool call has a result to show (one still scheduled or executing has none)."""
    return call.get("result") is not None or call.get("status") in DONE_STATUSES


def _result(call: dict[str, Any]) -> ToolResult:
    """A toolCalls entry's result: function responses joined, failed on an error or cancelled status."""
    result = call.get("result")
    parts = result if isinstance(result, list) else [result]
    outputs = [_response_text(part) for part in parts if isinstance(part, dict)]
    output = "\n".join([text for text in outputs if text])
    if not output and isinstance(call.get("resultDisplay"), str):
        output = call["resultDisplay"]
    exit_code = EXIT_CODE.search(output)
    return ToolResult(call_id=call.get("id"), name=call.get("name"), output=output,
                      is_error=call.get("status") in FAILED_STATUSES,
                      exit_code=int(exit_code.group(1)) if exit_code else None)


def _response_text(part: dict[str, Any]) -> str:
    """Text of one result part: a functionResponse's output or error, or a text part."""
    response = (part.get("functionResponse") or {}).get("response")
    if isinstance(response, dict):
        value = response.get("output", response.get("error", response))
        return value if isinstance(value, str) else json.dumps(value)
    return part.get("text") if isinstance(part.get("text"), str) else ""


def _trace(recording: _Recording) -> Trace:
    """The session's Trace from the kept records: those with messages are used, the others skipped."""
    log, messages, used, model = recording.log, [], 0, None
    for kept in recording.records.values():
        if kept.messages:
            messages.extend(kept.messages)
            used += 1
        else:
            log.skip(f"message:{kept.kind}" if kept.kind in SKIPPED_TYPES else "message:empty")
        if model is None and kept.model:
            model = kept.model
    log.use(used)
    header = recording.header
    task = next((message.content for message in messages if message.role == "user" and message.content), None)
    meta = {"project_hash": header.get("projectHash"), "kind": header.get("kind"), "summary": header.get("summary"),
            "directories": header.get("directories"), "ended_at": parse_time(header.get("lastUpdated"))}
    return Trace(trace_id=str(header.get("sessionId") or recording.path.stem), format=NAME,
                 source=str(recording.path), messages=messages, task=task, model=model,
                 started_at=parse_time(header.get("startTime")),
                 meta={key: value for key, value in meta.items() if value not in (None, "", [])})


FORMAT = TraceFormat(NAME, "Gemini CLI chat recordings (session JSON or JSONL append log)", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
