"""Aider chat history (`.aider.chat.history.md`): one Markdown file appended to by every aider session.

Layout as aider writes it: `# aider chat started at <time>` opens a session; user input lines start with
`#### ` and end with two spaces; aider's own output (banner, command output, edit results, errors) starts
with `> ` (a multi-line output carries the prefix on its first line only and ends with the first line that
ends in a non-space and two spaces and is followed by a blank line, new output or user input); the model's
reply is bare Markdown after a blank line, and may itself hold `> ` quotes and `#### ` headings.

Mapping: user input -> `user` messages; replies -> `assistant` messages whose content is the verbatim reply,
with every SEARCH/REPLACE block also parsed into an `edit` tool call (meta `tool_calls_in_content`); aider
output -> `tool` messages: after a reply with edits it is the edits' result (failed when the edit format
was not followed or a block did not match, that is when the edit was not applied; the lint report aider
prints after an applied edit covers the whole file, old problems included, and ends in a question to the
user, so it does not fail the edit; failing tests are still read from their output), after a slash command the
command's output (`/run`, `/test`, `/lint`: failed when failures or a non-zero exit code can be read), else
aider's own notices (name `aider`). Whole-file replies (`whole` edit format) are not parsed into calls, but
their edit results are named `edit` too. The banner that opens a session fills model, version and meta
instead of becoming a message. Text before the first header (a history whose start was cut off) is a
session of its own with meta `headerless`; an Emacs mode line on line 1 is skipped.

The file is read in blocks of whole lines (decoded a block at a time), fed to the parser line by line, and
each session is yielded when the next header arrives, so memory is bounded by the largest session, not by the
file. Records: headers, message blocks, the banner, mode lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, count
from pathlib import Path
from typing import IO, Any, Literal

from composer_core.plugins import Register, hookimpl
from composer_core.traces.contracts import RAW_EXCERPT_CHARS, Message, Provenance, ToolCall, ToolResult, Trace
from composer_core.traces.formats import IngestLog, TraceFormat, head

NAME = "aider"
FILE_SUFFIX = ".aider.chat.history.md"
DETECT_BYTES = 65536
MAX_LINE_BYTES = 1 << 20
READ_BYTES = 1 << 16  # read at a time: what a block of lines holds, unless a line is longer
HEADER_TEXT = "# aider chat started at "
HEADER = re.compile(re.escape(HEADER_TEXT) + "(.*)")
MODE_LINE = re.compile(r"-\*-.*-\*-\s*")
VERSION = re.compile(r"^Aider v(\S+)", re.M)
MODEL = re.compile(r"^(?:Main model|Models?): (\S+).*? with [^\w\n]*(\w+) edit format(?:, weak model (\S+))?", re.M)
WEAK_MODEL = re.compile(r"^Weak model: (\S+)", re.M)
SEARCH = re.compile(r"<{5,9} SEARCH\s*")
DIVIDER = re.compile(r"={5,9}\s*")
REPLACE = re.compile(r">{5,9} REPLACE\s*")
FENCE = re.compile(r"(`{3,}|~{3,}|<source\b)")
EDIT_FAILURE = re.compile(r"The LLM did not conform to the edit format|SEARCH/REPLACE blocks? failed to match")
EDIT_APPLIED = re.compile(r"^Applied edit to ", re.M)
COMMAND_FAILURE = re.compile(r"Traceback \(most recent call last\)|^FAILED |\b[1-9]\d* (?:failed|errors?)\b"
                             r"|\.{3,}Failed\b|exit code: [1-9]", re.M)
EXIT_CODE = re.compile(r"exit (?:code|status):? (-?\d+)", re.I)
CHECKED_COMMANDS = ("run", "test", "lint")

Kind = Literal["user", "tool", "assistant"]


@dataclass(slots=True)
class Line:
    """One physical line: text without its newline; `problem` says why it cannot be trusted, if it cannot."""

    number: int
    text: str
    problem: str | None = None


@dataclass
class Block:
    """Consecutive lines of one speaker. For aider output, `open_output` while a multi-line output has not
    ended and `closing` when its last line may end it (the next line decides)."""

    kind: Kind
    start: int
    lines: list[str] = field(default_factory=list)
    problem: tuple[int, str] | None = None
    open_output: bool = False
    closing: bool = False

    def add(self, line: Line) -> None:
        self.lines.append(line.text)
        if line.problem and self.problem is None:
            self.problem = (line.number, line.problem)
        if self.kind != "tool" or line.problem:
            return
        if self.open_output:
            self.closing = ends_output(line.text)
        else:
            self.open_output = not line.text.endswith("  ")

    def end_output(self) -> None:
        self.open_output = self.closing = False

    def absorb(self, other: Block) -> None:
        self.lines.extend(other.lines)
        self.problem = self.problem or other.problem


@dataclass
class Session:
    """A session being assembled: its header line (None before the first header) and its messages."""

    start: int
    started_at: datetime | None = None
    messages: list[Message] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    agent_version: str | None = None


def detect(path: Path) -> bool:
    """An aider history file by its name, or a session header within the first 64 KB."""
    if not path.is_file():
        return False
    if path.name.endswith(FILE_SUFFIX):
        return True
    text = head(path, DETECT_BYTES)
    return HEADER_TEXT in text and any(HEADER.fullmatch(line) for line in text.splitlines())


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    """Stream the sessions of one history file."""
    parser = Parser(path, log)
    with path.open("rb") as stream:
        for line in physical_lines(stream):
            if (trace := parser.feed(line)) is not None:
                yield trace
    if (trace := parser.finish()) is not None:
        yield trace


def physical_lines(stream: IO[bytes]) -> Iterator[Line]:
    """Lines split on `\\n` only (so numbers match an editor's), decoded as UTF-8; over-long, undecodable,
    NUL-bearing and unterminated last lines are flagged, never raised."""
    return chain.from_iterable(decode_block(number, block) for number, block in numbered_blocks(stream))


def numbered_blocks(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """The blocks of `line_blocks`, each with the number of the line before it."""
    number = 0
    for block in line_blocks(stream):
        yield number, block
        number += 1 if block is None else block.count(b"\n") + (not block.endswith(b"\n"))


def line_blocks(stream: IO[bytes]) -> Iterator[bytes | None]:
    """The file as blocks of whole lines, each line shorter than MAX_LINE_BYTES, read READ_BYTES at a time (so
    decoding and splitting are done once per block, not per line); None stands for an over-long line, which is
    skipped without being held, and an unterminated last line comes alone at the end."""
    limit, buffer, ended = MAX_LINE_BYTES, b"", False
    while True:
        end = buffer.rfind(b"\n", 0, limit)
        if end == -1 and not ended and len(buffer) < limit:
            data = stream.read(READ_BYTES)
            ended = not data
            buffer += data
            continue
        if not buffer:
            return
        if end != -1:
            yield buffer[:end + 1]
            buffer = buffer[end + 1:]
        elif len(buffer) < limit:  # at the end of the file: the last line, unterminated
            yield buffer
            return
        else:
            yield None
            buffer = skip_line(stream, buffer)


def skip_line(stream: IO[bytes], buffer: bytes) -> bytes:
    """What follows the end of the line that `buffer` starts, reading on as far as it goes."""
    newline = buffer.find(b"\n")
    while newline == -1:
        buffer = stream.read(READ_BYTES)
        if not buffer:
            return b""
        newline = buffer.find(b"\n")
    return buffer[newline + 1:]


def decode_block(number: int, block: bytes | None) -> Iterator[Line]:
    """The lines of a block (None: an over-long line), numbered after `number`: decoded at once when the block is
    clean UTF-8 without NUL bytes (the usual case), else line by line so that each bad line is flagged on its
    own. Made lazily, so that one line object is alive at a time (a block's worth would cost the garbage
    collector dearly)."""
    if block is None:
        return iter([Line(number + 1, "", f"line longer than {MAX_LINE_BYTES} bytes")])
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        return decode_lines(number, block)
    texts = text.split("\n")
    last = texts.pop()  # "" after the final newline, else an unterminated last line
    if "\r" in text:
        texts = [line.rstrip("\r") for line in texts]
    lines = map(Line, count(number + 1), texts)
    return chain(lines, [decode_line(number + len(texts) + 1, last.encode("utf-8"))]) if last else lines


def decode_lines(number: int, block: bytes) -> Iterator[Line]:
    """The lines of a block that is not clean text, each decoded and flagged on its own."""
    chunks = block.split(b"\n")
    last = chunks.pop()  # b"" after the final newline, else an unterminated last line
    for index, chunk in enumerate(chunks, start=number + 1):
        yield decode_line(index, chunk + b"\n")
    if last:
        yield decode_line(number + len(chunks) + 1, last)


def decode_line(number: int, chunk: bytes) -> Line:
    """Decode one line; flag binary content and a missing newline (a truncated file)."""
    ended = chunk.endswith(b"\n")
    raw = chunk.rstrip(b"\n").rstrip(b"\r")
    try:
        text, problem = raw.decode("utf-8"), None
    except UnicodeDecodeError as error:
        text, problem = raw.decode("utf-8", errors="replace"), f"not UTF-8 text: {error.reason}"
    if "\x00" in text:
        problem = "binary content: NUL bytes"
    if not ended and problem is None:
        problem = "truncated: the file ends in the middle of this message (no final newline)"
    return Line(number, text, problem)


def ends_output(text: str) -> bool:
    """Whether a line may end a multi-line aider output: aider strips the text and appends two spaces."""
    return text.endswith("  ") and len(text) > 2 and not text[-3].isspace()


def is_boundary(text: str) -> bool:
    """A line that cannot continue aider output: blank, or the start of new output or user input."""
    return not text.strip() or is_output_line(text) or is_user_line(text)


def is_user_line(text: str) -> bool:
    return text.startswith("#### ") or text.rstrip() == "####"


def is_output_line(text: str) -> bool:
    return text.startswith("> ") or text.rstrip() == ">"


class Parser:
    """The line-by-line state machine: current session, current block, blank lines just seen."""

    def __init__(self, path: Path, log: IngestLog) -> None:
        self.path = path
        self.log = log
        self.session = Session(start=1, meta={"headerless": True})
        self.block: Block | None = None
        self.pending: Block | None = None
        self.blanks = 0

    def where(self, line: int) -> Provenance:
        return Provenance(format=NAME, file=str(self.path), line=line)

    def feed(self, line: Line) -> Trace | None:
        """Take one line; returns the previous session when this line is a session header."""
        if line.problem and line.problem.startswith("truncated"):
            self.session.meta["truncated"] = True
        if self.takes_at_once(line):
            return None
        header = HEADER.fullmatch(line.text) if line.problem is None and line.text.startswith(HEADER_TEXT) else None
        if header is not None:
            finished = self.finish()
            self.start_session(line, header.group(1).strip())
            return finished
        elif line.number == 1 and MODE_LINE.fullmatch(line.text):
            self.log.record()
            self.log.skip("emacs mode line")
        elif line.problem and not line.text.strip():
            target = self.pending or self.block
            if target is None:
                self.open_block(line, "assistant")
            else:
                target.add(line)
        else:
            self.classify(line)
        return None

    def takes_at_once(self, line: Line) -> bool:
        """The usual lines, decided without the full checks of `classify` (which would decide the same): a sound
        line continuing a multi-line aider output that its last line could not end, a blank line or text not led
        by `#` or `>` in a reply with no output pending, an output line after output, user input after input."""
        block = self.block
        if block is None or line.problem is not None or self.pending is not None:
            return False
        text = line.text
        if block.open_output:
            if block.closing or text.startswith(HEADER_TEXT):
                return False
            block.add(line)
            return True
        if block.kind == "assistant":
            if not text or text.isspace():
                self.blanks += 1
                block.add(line)
                return True
            if text[0] in "#>":
                return False
        elif not (is_output_line(text) if block.kind == "tool" else is_user_line(text)):
            return False
        block.add(line)
        self.blanks = 0
        return True

    def classify(self, line: Line) -> None:
        """Route one line to the pending output, the current block or a new one."""
        if self.pending is not None and self.settle_pending(line):
            return
        text, block = line.text, self.block
        if block is not None and block.open_output and not (block.closing and is_boundary(text)):
            block.add(line)
            return
        if block is not None:
            block.end_output()
        if not text.strip():
            self.blank(line)
            return
        if is_user_line(text) and self.ends_reply(text):
            self.continue_or_open(line, "user")
        elif is_output_line(text):
            self.output_line(line)
        elif block is not None and block.kind == "tool":
            block.open_output = True
            block.add(line)
        elif block is not None and block.kind == "user":
            self.close_block()
            self.open_block(line, "assistant")
        else:
            self.continue_or_open(line, "assistant")
        self.blanks = 0

    def ends_reply(self, text: str) -> bool:
        """Whether a `#### ` line is user input: always outside a reply; inside one only after a blank line
        and with aider's two trailing spaces, or after two blank lines."""
        if self.block is None or self.block.kind != "assistant":
            return True
        return self.blanks >= 2 or (self.blanks == 1 and text.endswith("  "))

    def output_line(self, line: Line) -> None:
        """A `> ` line: aider output, except inside a reply (a Markdown quote) unless a blank line precedes
        it; there, one without the two trailing spaces opens a pending multi-line output."""
        if self.block is None or self.block.kind != "assistant":
            self.continue_or_open(line, "tool")
        elif self.blanks == 0:
            self.block.add(line)
        elif line.text.endswith("  "):
            self.continue_or_open(line, "tool")
        else:
            self.pending = Block(kind="tool", start=line.number)
            self.pending.add(line)

    def settle_pending(self, line: Line) -> bool:
        """Decide a pending output: it is aider's when its closing line is followed by a boundary (the reply
        ended before it); a blank line before that makes it part of the reply. True if the line was taken."""
        pending, reply = self.pending, self.block
        assert pending is not None and reply is not None
        if pending.closing and is_boundary(line.text):
            self.pending = None
            self.close_block()
            pending.end_output()
            self.block = pending
            return False
        if not line.text.strip():
            self.pending = None
            reply.absorb(pending)
            return False
        pending.add(line)
        self.blanks = 0
        return True

    def blank(self, line: Line) -> None:
        self.blanks += 1
        if self.block is not None and self.block.kind == "assistant":
            self.block.add(line)
        elif self.block is not None:
            self.close_block()

    def continue_or_open(self, line: Line, kind: Kind) -> None:
        if self.block is not None and self.block.kind == kind:
            self.block.add(line)
            return
        self.close_block()
        self.open_block(line, kind)

    def open_block(self, line: Line, kind: Kind) -> None:
        self.block = Block(kind=kind, start=line.number)
        self.block.add(line)

    def start_session(self, line: Line, stamp: str) -> None:
        self.log.record()
        self.session = Session(start=line.number)
        self.blanks = 0
        try:
            self.session.started_at = datetime.fromisoformat(stamp)
        except ValueError:
            self.log.reject_at(self.where(line.number), f"bad session timestamp {stamp!r}", line.text)
            return
        self.log.use()

    def close_block(self) -> None:
        """Turn the current block into a message (or the banner), or reject it."""
        block, self.block = self.block, None
        if block is None:
            return
        self.log.record()
        if block.problem is not None:
            number, reason = block.problem
            self.log.reject_at(self.where(number), reason, "\n".join(block.lines))
            return
        self.log.use()
        text = block_text(block)
        if block.kind == "tool" and not self.session.messages and "headerless" not in self.session.meta:
            self.add_banner(text)
        else:
            self.session.messages.append(self.message(block, text))

    def add_banner(self, text: str) -> None:
        """The output that opens a session: version, model, edit format and weak model, and an excerpt."""
        session = self.session
        version, model, weak = VERSION.search(text), MODEL.search(text), WEAK_MODEL.search(text)
        session.agent_version = session.agent_version or (version.group(1) if version else None)
        session.model = session.model or (model.group(1) if model else None)
        found = {"edit_format": model.group(2) if model else None,
                 "weak_model": (model.group(3) if model else None) or (weak.group(1) if weak else None)}
        for key, value in found.items():
            if value:
                session.meta.setdefault(key, value)
        banner = session.meta.get("banner", "")
        session.meta["banner"] = (banner + "\n" + text if banner else text)[:RAW_EXCERPT_CHARS]

    def message(self, block: Block, text: str) -> Message:
        where = self.where(block.start)
        if block.kind == "assistant":
            return Message(role="assistant", content=text, tool_calls=edit_calls(block), provenance=where)
        if block.kind == "user":
            return Message(role="user", content=text, provenance=where)
        return Message(role="tool", tool_result=output_result(text, self.last_action()), provenance=where)

    def last_action(self) -> Message | None:
        """The latest user or assistant message: what an aider output answers."""
        return next((message for message in reversed(self.session.messages) if message.role != "tool"), None)

    def finish(self) -> Trace | None:
        """Close the current block and return the session (a headerless one only if it has messages)."""
        if self.pending is not None:
            self.settle_pending(Line(0, ""))
        self.close_block()
        session = self.session
        if "headerless" in session.meta and not session.messages:
            return None
        task = next((message.content for message in session.messages
                     if message.role == "user" and not message.content.startswith("/")), None)
        return Trace(trace_id=f"{self.path.stem}:{session.start}", format=NAME, source=str(self.path),
                    messages=session.messages, task=task, model=session.model, agent_version=session.agent_version,
                    started_at=session.started_at, meta={**session.meta, "tool_calls_in_content": True})


def block_text(block: Block) -> str:
    """A block's text without aider's line prefixes and trailing two spaces."""
    if block.kind == "assistant":
        return "\n".join(block.lines).strip()
    prefix = "####" if block.kind == "user" else ">"
    lines = []
    for text in block.lines:
        text = text.removesuffix("  ")
        if text.startswith(prefix + " ") or text == prefix:
            text = text[len(prefix) + 1:]
        lines.append(text)
    return "\n".join(lines).strip()


def edit_calls(block: Block) -> list[ToolCall]:
    """SEARCH/REPLACE blocks of a reply as `edit` calls; an unterminated block keeps its raw text."""
    lines, calls, path = block.lines, [], ""
    index = 0
    while index < len(lines):
        if not SEARCH.fullmatch(lines[index]):
            index += 1
            continue
        path = edit_path(lines, index) or path
        end, arguments = edit_block(lines, index, path)
        calls.append(ToolCall(id=f"edit@{block.start + index}", name="edit", arguments=arguments))
        index = end
    return calls


def edit_path(lines: list[str], search_index: int) -> str | None:
    """The file name aider expects just before a block (skipping the fence line), if one is there."""
    for text in reversed(lines[max(0, search_index - 3):search_index]):
        stripped = text.strip()
        if not stripped or FENCE.match(stripped):
            continue
        name = stripped.strip("`*#:").strip()
        return name if name and " " not in name else None
    return None


def edit_block(lines: list[str], start: int, path: str) -> tuple[int, dict[str, Any] | str]:
    """Parse the block at `start`: (index after it, {path, search, replace}); an unterminated block (a new
    SEARCH before its divider, or no REPLACE) gives its raw text instead of the arguments."""
    divider = None
    stop = len(lines)
    for index in range(start + 1, len(lines)):
        text = lines[index]
        if divider is None and SEARCH.fullmatch(text):
            stop = index
            break
        if divider is None and DIVIDER.fullmatch(text):
            divider = index
        elif divider is not None and REPLACE.fullmatch(text):
            return index + 1, {"path": path, "search": "\n".join(lines[start + 1:divider]),
                               "replace": "\n".join(lines[divider + 1:index])}
    return stop, "\n".join(lines[start:stop])


def output_result(text: str, action: Message | None) -> ToolResult:
    """Aider output as a tool result, named and judged by what it answers: the edits of a reply (also a
    whole-file reply, whose edits are not parsed into calls), a slash command, or else aider itself."""
    if action is not None and action.role == "assistant":
        failed = bool(EDIT_FAILURE.search(text))
        if action.tool_calls or failed or EDIT_APPLIED.search(text):
            call_id = action.tool_calls[0].id if action.tool_calls else None
            return ToolResult(call_id=call_id, name="edit", output=text, is_error=failed)
    command = slash_command(action)
    if command is None:
        return ToolResult(name="aider", output=text)
    if command not in CHECKED_COMMANDS:
        return ToolResult(name=command, output=text)
    return ToolResult(name=command, output=text, exit_code=exit_code(text),
                      is_error=bool(COMMAND_FAILURE.search(text)))


def slash_command(action: Message | None) -> str | None:
    """The command of a `/command ...` user message."""
    if action is None or action.role != "user" or not action.content.startswith("/"):
        return None
    name = action.content[1:].split(maxsplit=1)
    return name[0] if name else None


def exit_code(text: str) -> int | None:
    """The first non-zero exit code reported in the output, else 0 when only zeros are, else None."""
    codes = [int(match.group(1)) for match in EXIT_CODE.finditer(text)]
    return next((code for code in codes if code != 0), 0 if codes else None)


FORMAT = TraceFormat(NAME, "Aider .aider.chat.history.md, one session per `# aider chat started at` header",
                     detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
