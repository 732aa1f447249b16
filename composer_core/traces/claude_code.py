"""Claude Code session transcripts (`~/.claude/projects/<project>/<session>.jsonl`), one JSON object a line.

Lines are chained by `uuid` / `parentUuid`. An assistant turn is streamed as one line per content block
sharing one `message.id`: consecutive blocks of one id merge into one assistant message (text -> content,
thinking -> thinking, tool_use -> tool calls). Tool results come back as user lines with `tool_result`
blocks and become `tool` messages; `is_error`, `<tool_use_error>` text and permission denials mark them
failed, and a Bash failure's `Exit code N` becomes the exit code. Subagent lines (`isSidechain`, inline in
1.0.x) are kept out of the main trace: each subagent chain becomes its own trace, yielded after the main
one, with `meta.sidechain` and, when its prompt matches a Task call, `meta.parent_tool_use_id`.

Known non-conversation lines (summary, snapshots, queue operations, attachments, system lines ...) are
skipped by type, synthetic assistant lines (API errors, `<synthetic>` model) as such; an unknown `type` is
rejected. Messages keep file order.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import IngestLog, TraceFormat, jsonl_records, leading_json_objects, parse_time
from composer_core.traces.openai_messages import text_of

NAME = "claude_code"
SKIPPED_TYPES = frozenset({
    "summary", "file-history-snapshot", "queue-operation", "last-prompt", "attachment", "permission-mode",
    "mode", "progress", "agent-name", "custom-title", "ai-title", "frame-link", "pr-link", "started", "result",
    "relocated", "worktree-state", "bridge-session", "atis-latch",
})
KNOWN_TYPES = SKIPPED_TYPES | {"user", "assistant", "system"}
DENIAL = re.compile(r"requested permissions? to|doesn't want to proceed with this tool use"
                    r"|permission to use \S+ (has been|was) (auto-)?denied", re.I)
EXIT_CODE = re.compile(r"\AExit code (-?\d+)\b")
NOT_A_PROMPT = ("<command-", "<local-command-", "Caveat: ", "[Request interrupted")


@dataclass
class _Chain:
    """The messages of one trace being built (the main session or one subagent)."""

    messages: list[Message] = field(default_factory=list)
    open_id: str | None = None
    call_names: dict[str, str] = field(default_factory=dict)
    task: str | None = None
    first_time: datetime | None = None
    last_time: datetime | None = None
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass
class _Session:
    """What one file has said so far: the main chain, subagent chains, and session-level fields."""

    path: Path
    log: IngestLog
    main: _Chain = field(default_factory=_Chain)
    sidechains: dict[str, _Chain] = field(default_factory=dict)
    sidechain_of: dict[str, str] = field(default_factory=dict)
    task_prompts: dict[str, str] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)


def detect(path: Path) -> bool:
    """A `.jsonl` whose leading lines hold a Claude Code line: a known `type`, no envelope, session fields."""
    return path.suffix == ".jsonl" and any(_is_claude_line(line) for line in leading_json_objects(path))


def _is_claude_line(line: dict[str, Any]) -> bool:
    kind = line.get("type")
    if not isinstance(kind, str) or kind not in KNOWN_TYPES or "payload" in line:
        return False
    return any(key in line for key in ("sessionId", "parentUuid", "leafUuid", "snapshot"))


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    """Stream one session file: the main trace, then one trace per subagent chain."""
    session = _Session(path, log)
    for where, line in jsonl_records(path, NAME, log):
        try:
            chain = _chain_of(session, line, where)
            _note(session, chain, line)
            _dispatch(session, chain, line, where)
        except (ValueError, TypeError, AttributeError) as error:
            log.reject_at(where, f"bad {line.get('type')} line: {error}", json.dumps(line))
    yield from _traces(session)


def _note(session: _Session, chain: _Chain, line: dict[str, Any]) -> None:
    """Keep session-level text fields (first value wins) and the chain's first and last timestamps."""
    for key in ("sessionId", "version", "cwd", "gitBranch"):
        if isinstance(line.get(key), str) and line[key] and key not in session.header:
            session.header[key] = line[key]
    when = parse_time(line.get("timestamp"))
    if when is not None:
        chain.first_time = chain.first_time or when
        chain.last_time = when


def _chain_of(session: _Session, line: dict[str, Any], where: Provenance) -> _Chain:
    """The main chain, or the subagent chain a sidechain line belongs to (found through its parent)."""
    if not line.get("isSidechain"):
        return session.main
    root = session.sidechain_of.get(line.get("parentUuid") or "")
    if root is None:
        root = str(line.get("uuid") or f"line {where.line}")
        session.sidechains[root] = _Chain()
    if line.get("uuid"):
        session.sidechain_of[line["uuid"]] = root
    return session.sidechains[root]


def _dispatch(session: _Session, chain: _Chain, line: dict[str, Any], where: Provenance) -> None:
    """Account for one line: a message line is converted, a known other line skipped, the rest rejected."""
    kind = line.get("type")
    log = session.log
    if kind == "system":
        log.skip(f"system:{line.get('subtype') or 'none'}")
    elif kind in SKIPPED_TYPES:
        log.skip(str(kind))
    elif kind not in ("user", "assistant"):
        log.reject_at(where, f"unknown event type '{kind}'", json.dumps(line))
    elif not isinstance(line.get("message"), dict):
        log.reject_at(where, f"{kind} line without a 'message' object", json.dumps(line))
    elif kind == "assistant" and (line.get("isApiErrorMessage") or line["message"].get("model") == "<synthetic>"):
        log.skip("assistant:synthetic")
    elif _convert(session, chain, line, where):
        log.use()
    else:
        log.skip(f"{kind}:no content")


def _convert(session: _Session, chain: _Chain, line: dict[str, Any], where: Provenance) -> bool:
    """Add what one user or assistant line says to its chain; False when it says nothing usable."""
    message = line["message"]
    when = parse_time(line.get("timestamp"))
    blocks = message.get("content")
    if isinstance(blocks, str):
        blocks = [{"type": "text", "text": blocks}]
    if not isinstance(blocks, list):
        raise ValueError(f"message content is a {type(blocks).__name__}")
    if line["type"] == "assistant":
        if isinstance(message.get("model"), str) and message["model"] and "model" not in session.header:
            session.header["model"] = message["model"]
        return _assistant(session, chain, message.get("id"), blocks, where, when)
    return _user(session, chain, line, blocks, where, when)


def _assistant(session: _Session, chain: _Chain, message_id: str | None, blocks: list[Any], where: Provenance,
               when: datetime | None) -> bool:
    """Merge an assistant line's blocks into the open message of the same id, or open a new one."""
    texts, thoughts, calls = [], [], []
    for block in blocks:
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(_call(session, chain, block))
        else:
            chain.dropped[f"assistant {kind}"] += 1
    if not any(texts + thoughts) and not calls:
        return False
    if message_id is None or message_id != chain.open_id:
        current = Message(role="assistant", timestamp=when, provenance=where)
        chain.messages.append(current)
        chain.open_id = message_id
    else:
        current = _last_assistant(chain)
    current.content = "\n\n".join(part for part in (current.content, *texts) if part)
    current.thinking = "\n\n".join(part for part in (current.thinking, *thoughts) if part) or None
    current.tool_calls.extend(calls)
    return True


def _last_assistant(chain: _Chain) -> Message:
    """The open assistant message (results of its first tool calls may already follow it)."""
    return next(message for message in reversed(chain.messages) if message.role == "assistant")


def _call(session: _Session, chain: _Chain, block: dict[str, Any]) -> ToolCall:
    """A tool_use block as a ToolCall; a subagent prompt is remembered to link its sidechain."""
    if not block.get("name"):
        raise ValueError("tool_use block without a name")
    arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
    call = ToolCall(id=block.get("id"), name=block["name"], arguments=arguments)
    if call.id:
        chain.call_names[call.id] = call.name
        if isinstance(arguments.get("prompt"), str):
            session.task_prompts[arguments["prompt"]] = call.id
    return call


def _user(session: _Session, chain: _Chain, line: dict[str, Any], blocks: list[Any], where: Provenance,
          when: datetime | None) -> bool:
    """Tool results become tool messages; text becomes one user message (which closes the open turn)."""
    results = [Message(role="tool", tool_result=_result(chain, line, block), timestamp=when, provenance=where)
               for block in blocks if block.get("type") == "tool_result"]
    texts = [block["text"] for block in blocks if block.get("type") == "text" and isinstance(block.get("text"), str)
             and block["text"]]
    chain.messages.extend(results)
    chain.dropped.update(f"user {block.get('type')}" for block in blocks
                         if block.get("type") not in ("text", "tool_result"))
    if texts:
        text = "\n\n".join(texts)
        chain.messages.append(Message(role="user", content=text, timestamp=when, provenance=where))
        chain.open_id = None
        if chain.task is None and not line.get("isCompactSummary") and not text.startswith(NOT_A_PROMPT):
            chain.task = text
    return bool(results or texts)


def _result(chain: _Chain, line: dict[str, Any], block: dict[str, Any]) -> ToolResult:
    """A tool_result block as a ToolResult, failed on is_error, a tool_use_error or a permission denial."""
    call_id = block.get("tool_use_id") or line.get("sourceToolUseID")
    output = text_of(block.get("content"))
    is_error = bool(block.get("is_error") or line.get("toolDenialKind") or "<tool_use_error>" in output
                    or DENIAL.search(output[:500]))
    exit_code = EXIT_CODE.match(output) if is_error else None
    return ToolResult(call_id=call_id, name=chain.call_names.get(call_id or ""), output=output, is_error=is_error,
                      exit_code=int(exit_code.group(1)) if exit_code else None)


def _traces(session: _Session) -> Iterator[Trace]:
    """The main trace, then one trace per subagent chain, skipping chains without messages."""
    session_id = str(session.header.get("sessionId") or session.path.stem)
    if session.main.messages:
        yield _trace(session, session.main, session_id, {})
    for number, (root, chain) in enumerate(session.sidechains.items(), start=1):
        if chain.messages:
            link = {"sidechain": True, "parent_trace_id": session_id, "root_uuid": root,
                    "parent_tool_use_id": session.task_prompts.get(chain.task or "")}
            yield _trace(session, chain, f"{session_id}/sidechain-{number}", link)


def _trace(session: _Session, chain: _Chain, trace_id: str, extra: dict[str, Any]) -> Trace:
    """One Trace from a chain and the session-level fields."""
    header = session.header
    meta = {"cwd": header.get("cwd"), "git_branch": header.get("gitBranch"), "ended_at": chain.last_time, **extra}
    if chain.dropped:
        meta["dropped_blocks"] = dict(chain.dropped)
    return Trace(trace_id=trace_id, format=NAME, source=str(session.path), messages=chain.messages, task=chain.task,
                 model=header.get("model"), agent_version=header.get("version"), started_at=chain.first_time,
                 meta={key: value for key, value in meta.items() if value not in (None, "")})


FORMAT = TraceFormat(NAME, "Claude Code session transcripts (JSONL, one line per content block)", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
