"""Cline / Roo Code `api_conversation_history.json`: one task's messages as sent to the model, a JSON array
of Anthropic-style `{role, content[]}` messages (content may also be a plain string).

Assistant content: `text`, `thinking` (`redacted_thinking` is skipped) and native `tool_use` blocks; older
versions write tool calls as XML-like tags inside the text (`<execute_command><command>ls</command>
</execute_command>`) and thinking as `<thinking>` tags: those are parsed into tool calls and thinking while
the text stays verbatim in the content (meta `tool_calls_in_content`). User content: the task in `<task>`,
then tool results as text blocks beginning `[<tool> for '<arg>'] Result:` (the blocks that follow, up to the
next result, belong to the same result), `tool_result` blocks in versions that used them, and
`<environment_details>` blocks, which are skipped. A result is failed when its text reports an error (a
tool execution error, a denied operation, a missing parameter) or a non-zero exit code; Cline's own
`[ERROR] You did not use a tool...` notice becomes a failed result named `cline`. Timestamps come from a
message's `ts` (milliseconds) where present; the task folder's name (its creation time in milliseconds)
gives the trace id and, failing `ts`, the start time.

Records: the file, then every content block (a message whose content is a string, or empty, counts as one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import IngestLog, TraceFormat, head, is_regular_file, load_json, parse_arguments

NAME = "cline"
FILE_NAME = "api_conversation_history.json"
TOOLS = ("execute_command", "read_file", "write_to_file", "replace_in_file", "apply_diff", "insert_content",
         "search_and_replace", "search_files", "list_files", "list_code_definition_names", "codebase_search",
         "browser_action", "use_mcp_tool", "access_mcp_resource", "ask_followup_question", "attempt_completion",
         "plan_mode_respond", "plan_mode_response", "new_task", "switch_mode", "fetch_instructions",
         "update_todo_list", "load_mcp_documentation", "web_fetch", "condense", "summarize_task", "new_rule",
         "report_bug")
XML_CALL = re.compile(r"<(" + "|".join(TOOLS) + r")>(.*?)(</\1>|\Z)", re.S)
XML_PARAM = re.compile(r"<([a-z_]+)>(.*?)</\1>", re.S)
THINKING_TAG = re.compile(r"<thinking>(.*?)</thinking>", re.S)
TASK = re.compile(r"<task>\s*(.*?)\s*</task>", re.S)
RESULT_HEADER = re.compile(r"\[([A-Za-z_][\w-]*)(?: for '(.*?)')?\] Result:", re.S)
ENVIRONMENT = re.compile(r"\s*<environment_details>.*?(?:</environment_details>|\Z)", re.S)
ERROR_TEXT = re.compile(r"^\[ERROR\]|The tool execution failed with the following error|Error executing command"
                        r"|The user denied this operation|Missing value for required parameter"
                        r"|Tool \[[\w-]+\] was not executed", re.M)
EXIT_CODE = re.compile(r"\bexit(?:ed with)? code:? (-?\d+)", re.I)
FIRST_ROLE = re.compile(r'"role"\s*:\s*"(\w+)"')
LIST_CONTENT = re.compile(r'"content"\s*:\s*\[')
SKIPPED_BLOCKS = frozenset({"redacted_thinking", "image"})


def detect(path: Path) -> bool:
    """By file name, or a `.json` array whose first user message wraps the task in `<task>`."""
    if not is_regular_file(path):
        return False
    if path.name.endswith(FILE_NAME):
        return True
    if path.suffix != ".json":
        return False
    start = head(path).lstrip()
    role = FIRST_ROLE.search(start)
    return (start.startswith("[") and role is not None and role.group(1) == "user" and "<task>" in start
            and LIST_CONTENT.search(start) is not None)


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    """One trace per file; the file is one record, each content block another."""
    value = load_json(path, NAME, log)
    if value is None:
        return
    where = Provenance(format=NAME, file=str(path))
    if not isinstance(value, list):
        log.reject_at(where, f"expected a JSON array of messages, got a {type(value).__name__}", head(path, 500))
        return
    conversation = Conversation(path, log)
    for index, raw in enumerate(value):
        conversation.add(index, raw)
    if not conversation.messages:
        log.skip("empty conversation")
        return
    log.use()
    yield conversation.trace()


@dataclass
class Pending:
    """A tool result being assembled from a result header and the text blocks after it."""

    where: Provenance
    name: str
    call_id: str | None
    parts: list[str] = field(default_factory=list)
    is_error: bool = False
    timestamp: datetime | None = None


class Conversation:
    """Converts messages in order, pairing tool results with the calls of the latest assistant message."""

    def __init__(self, path: Path, log: IngestLog) -> None:
        self.path = path
        self.log = log
        self.messages: list[Message] = []
        self.open_calls: list[ToolCall] = []
        self.model: str | None = None
        self.text_protocol = False

    def where(self, record: str) -> Provenance:
        return Provenance(format=NAME, file=str(self.path), record=record)

    def add(self, index: int, raw: Any) -> None:
        """Convert one API message; what cannot be read is rejected with its index."""
        where = self.where(f"[{index}]")
        role = raw.get("role") if isinstance(raw, dict) else None
        content = raw.get("content") if isinstance(raw, dict) else None
        if role not in ("user", "assistant") or not isinstance(content, (str, list)):
            self.log.record()
            self.log.reject_at(where, "not a message: expected {role: user|assistant, content: string or list}",
                               raw)
            return
        if not content:
            self.log.record()
            self.log.skip("empty message")
            return
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        stamp = timestamp(raw.get("ts"))
        if role == "assistant":
            self.model = self.model or model_id(raw.get("modelInfo"))
            self.assistant(blocks, where, stamp)
        else:
            self.user(blocks, where, stamp)

    def blocks(self, blocks: list[Any], where: Provenance) -> Iterator[tuple[str, dict[str, Any], Provenance]]:
        """Each block with its type and provenance, counted as a record; non-objects are rejected."""
        for number, block in enumerate(blocks):
            self.log.record()
            place = where.at(f"{where.record}.content[{number}]")
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                self.log.reject_at(place, "content block is not an object with a type", block)
                continue
            kind = block["type"]
            if kind in SKIPPED_BLOCKS:
                self.log.skip(kind)
                continue
            yield kind, block, place

    def assistant(self, blocks: list[Any], where: Provenance, stamp: datetime | None) -> None:
        texts: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        for kind, block, place in self.blocks(blocks, where):
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
                thinking.extend(part.strip() for part in THINKING_TAG.findall(block["text"]))
                written = xml_calls(block["text"], place)
                self.text_protocol = self.text_protocol or bool(written)
                calls.extend(written)
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
            elif kind == "tool_use" and isinstance(block.get("name"), str) and block["name"]:
                identifier = block.get("id")
                calls.append(ToolCall(id=identifier if isinstance(identifier, str) else None, name=block["name"],
                                      arguments=parse_arguments(block.get("input"))))
            else:
                self.log.reject_at(place, f"unknown or malformed assistant block: {kind}", block)
                continue
            self.log.use()
        self.open_calls = list(calls)
        if texts or thinking or calls:
            reasoning = "\n\n".join(thinking) or None
            self.messages.append(Message(role="assistant", content="\n\n".join(texts), thinking=reasoning,
                                         tool_calls=calls, timestamp=stamp, provenance=where))

    def user(self, blocks: list[Any], where: Provenance, stamp: datetime | None) -> None:
        texts: list[str] = []
        pending: Pending | None = None
        for kind, block, place in self.blocks(blocks, where):
            text = block.get("text")
            if kind == "text" and isinstance(text, str) and ENVIRONMENT.fullmatch(text):
                self.log.skip("environment_details")
                continue
            if kind == "text" and isinstance(text, str):
                text = ENVIRONMENT.sub("", text)
                text = text.lstrip()
                header = RESULT_HEADER.match(text)
                if header or text.startswith("[ERROR]"):
                    self.flush(texts, pending, where, stamp)
                    texts, pending = [], self.start_result(header, place, stamp)
                    text = text[header.end():] if header else text
                (pending.parts if pending else texts).append(text.strip())
            elif kind == "tool_result":
                self.flush(texts, pending, where, stamp)
                texts, pending = [], self.native_result(block, place, stamp)
            else:
                self.log.reject_at(place, f"unknown or malformed user block: {kind}", block)
                continue
            self.log.use()
        self.flush(texts, pending, where, stamp)

    def start_result(self, header: re.Match[str] | None, where: Provenance, stamp: datetime | None) -> Pending:
        """A result named by its header, or (no header) an `[ERROR]` notice from Cline itself."""
        if header is None:
            return Pending(where=where, name=NAME, call_id=None, is_error=True, timestamp=stamp)
        name = header.group(1)
        call = self.take_call(lambda candidate: candidate.name == name)
        return Pending(where=where, name=name, call_id=call.id if call else None, timestamp=stamp)

    def native_result(self, block: dict[str, Any], where: Provenance, stamp: datetime | None) -> Pending:
        call_id = block.get("tool_use_id") if isinstance(block.get("tool_use_id"), str) else None
        call = self.take_call(lambda candidate: candidate.id == call_id)
        pending = Pending(where=where, name=call.name if call else "", call_id=call_id,
                          is_error=block.get("is_error") is True, timestamp=stamp)
        pending.parts.append(content_text(block.get("content")))
        return pending

    def take_call(self, matches: Callable[[ToolCall], bool]) -> ToolCall | None:
        """Remove and return the first open call that matches (results answer calls in order)."""
        for index, call in enumerate(self.open_calls):
            if matches(call):
                return self.open_calls.pop(index)
        return None

    def flush(self, texts: list[str], pending: Pending | None, where: Provenance, stamp: datetime | None) -> None:
        """Emit the user text gathered so far, then the pending tool result."""
        content = "\n\n".join(part for part in texts if part)
        if content:
            self.messages.append(Message(role="user", content=content, timestamp=stamp, provenance=where))
        if pending is not None:
            output = "\n\n".join(part for part in pending.parts if part)
            code = exit_code(output)
            result = ToolResult(call_id=pending.call_id, name=pending.name or None, output=output, exit_code=code,
                                is_error=pending.is_error or bool(ERROR_TEXT.search(output)))
            self.messages.append(Message(role="tool", tool_result=result, timestamp=pending.timestamp,
                                         provenance=pending.where))

    def trace(self) -> Trace:
        first_user = next((message.content for message in self.messages if message.role == "user"), "")
        task = TASK.search(first_user)
        started = next((message.timestamp for message in self.messages if message.timestamp), None)
        completion = [call.arguments for message in self.messages for call in message.tool_calls
                      if call.name == "attempt_completion"]
        outcome = {"attempt_completion": completion[-1]} if completion else {}
        task_dir = self.path.parent.name if self.path.name == FILE_NAME else None
        meta = {"tool_calls_in_content": True} if self.text_protocol else {}
        return Trace(trace_id=task_dir or self.path.stem, format=NAME, source=str(self.path), messages=self.messages,
                     task=task.group(1) if task else None, model=self.model,
                     started_at=started or task_started(task_dir), outcome=outcome, meta=meta)


def xml_calls(text: str, where: Provenance) -> list[ToolCall]:
    """Tool calls written as XML-like tags; an unclosed tag keeps its raw text as the arguments."""
    calls = []
    for number, match in enumerate(XML_CALL.finditer(text)):
        name, body, closed = match.group(1), match.group(2), bool(match.group(3))
        params = {key: value.strip("\n") for key, value in XML_PARAM.findall(body)}
        arguments: dict[str, Any] | str = params if closed and (params or not body.strip()) else body
        calls.append(ToolCall(id=f"xml:{where.record}:{number}", name=name, arguments=arguments))
    return calls


def content_text(content: Any) -> str:
    """Text of a tool_result's content: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str))
    return ""


def exit_code(output: str) -> int | None:
    found = EXIT_CODE.search(output)
    return int(found.group(1)) if found else None


def timestamp(value: Any) -> datetime | None:
    """A message's `ts` (milliseconds since the epoch), if it has a usable one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def task_started(task_dir: str | None) -> datetime | None:
    """Cline names a task's folder after its creation time in milliseconds."""
    return timestamp(int(task_dir)) if task_dir and task_dir.isdigit() and len(task_dir) == 13 else None


def model_id(info: Any) -> str | None:
    value = info.get("modelId") if isinstance(info, dict) else None
    return value if isinstance(value, str) else None


FORMAT = TraceFormat(NAME, "Cline / Roo Code api_conversation_history.json (Anthropic-style messages)", detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
