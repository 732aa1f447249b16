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

The file is read in blocks of whole lines (decoded a block at a time, see `aider_lines`) and each session is
yielded when the next header arrives, so memory is bounded by the largest session, not by the file. Records:
headers, message blocks, the banner, mode lines.

Parsing: `Parser.feed` and `Parser.classify` hold the rules, line by line. Most lines only add themselves to
the current message, so a clean block of text is not fed line by line: `Parser.take_runs` takes at once each
run of lines whose effect one regex or text search over the block decides (the rest of a reply up to a line
that could end it, the rest of an output or of user input, blank lines, and a new message's first run), and
`classify` sees only the lines where the state may change. The result is the same as feeding every line.
Each finished block becomes message fields in `aider_messages` (its text, its edits, its result).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from composer_core.plugins import Register, hookimpl
from composer_core.traces.aider_lines import (
    HEADER_TEXT,
    blank_run_end,
    closed_output_run_end,
    ends_output,
    is_boundary,
    is_output_line,
    is_user_line,
    open_output_run_end,
    pieces,
    reply_run_end,
    trailing_blank_lines,
    user_run_end,
)
from composer_core.traces.aider_messages import Kind, MessageFields, block_text, edit_calls, output_result
from composer_core.traces.contracts import RAW_EXCERPT_CHARS, Provenance, Trace
from composer_core.traces.formats import IngestLog, TraceFormat, head, is_regular_file

NAME = "aider"
FILE_SUFFIX = ".aider.chat.history.md"
DETECT_BYTES = 65536
HEADER = re.compile(re.escape(HEADER_TEXT) + "(.*)")
MODE_LINE = re.compile(r"-\*-.*-\*-\s*")
# Patterns that match at the start of a line are searched for in the text with a newline put in front, each
# starting with that newline: the search then skips from newline to newline instead of trying every position.
VERSION = re.compile(r"\nAider v(\S+)")
MODEL = re.compile(r"\n(?:Main model|Models?): (\S+).*? with [^\w\n]*(\w+) edit format(?:, weak model (\S+))?")
WEAK_MODEL = re.compile(r"\nWeak model: (\S+)")


@dataclass(slots=True)
class Line:
    """One physical line: text without its newline; `problem` says why it cannot be trusted, if it cannot."""

    number: int
    text: str
    problem: str | None = None


@dataclass(slots=True)
class Block:
    """Consecutive lines of one speaker, kept as `parts` of one or more lines each (joined by newlines they give
    the block's text). For aider output, `open_output` while a multi-line output has not ended and `closing`
    when its last line may end it (the next line decides)."""

    kind: Kind
    start: int
    parts: list[str] = field(default_factory=list)
    problem: tuple[int, str] | None = None
    open_output: bool = False
    closing: bool = False

    def add(self, line: Line) -> None:
        self.parts.append(line.text)
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
        self.parts.extend(other.parts)
        self.problem = self.problem or other.problem

    def raw(self) -> str:
        return "\n".join(self.parts)


@dataclass(slots=True)
class Session:
    """A session being assembled: its header line (None before the first header) and its messages, as the
    fields of `Message`s (validated all at once when the trace is made: one call instead of one per message)."""

    start: int
    started_at: datetime | None = None
    messages: list[MessageFields] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    agent_version: str | None = None
    last_action: MessageFields | None = None  # the latest user or assistant message: what an output answers


def detect(path: Path) -> bool:
    """An aider history file by its name, or a session header within the first 64 KB."""
    if not is_regular_file(path):
        return False
    if path.name.endswith(FILE_SUFFIX):
        return True
    text = head(path, DETECT_BYTES)
    return HEADER_TEXT in text and any(HEADER.fullmatch(line) for line in text.splitlines())


def read(path: Path, log: IngestLog) -> Iterator[Trace]:
    """Stream the sessions of one history file."""
    parser = Parser(path, log)
    with path.open("rb") as stream:
        for piece in pieces(stream):
            if isinstance(piece, str):
                yield from parser.feed_lines(piece)
            elif (trace := parser.feed_line(*piece)) is not None:
                yield trace
    if (trace := parser.finish()) is not None:
        yield trace


class Parser:
    """The state machine: current session, current block, blank lines just seen, lines taken so far."""

    def __init__(self, path: Path, log: IngestLog) -> None:
        self.path = path
        self.file = str(path)
        self.log = log
        self.session = Session(start=1, meta={"headerless": True})
        self.block: Block | None = None
        self.pending: Block | None = None
        self.blanks = 0
        self.number = 0  # lines taken so far

    def where(self, line: int) -> Provenance:
        return Provenance(format=NAME, file=self.file, line=line)

    def feed_line(self, text: str, problem: str | None) -> Trace | None:
        """Take the next line of the file on its own (see `feed`)."""
        self.number += 1
        return self.feed(Line(self.number, text, problem))

    def feed_lines(self, text: str) -> Iterator[Trace]:
        """Take the next lines of the file, clean and whole: as many as `take_runs` can at once, then the line
        where it stopped on its own, and so on. That line goes through `feed` if it is a session header (then
        the previous session is yielded) or line 1 (which may be a mode line), else straight to `classify`,
        which is all `feed` would do with a clean line."""
        number, start = self.number + 1, 0
        while True:
            start, number = self.take_runs(text, start, number)
            if start == len(text):
                self.number = number - 1
                return
            newline = text.index("\n", start)
            line = Line(number, text[start:newline])
            if number == 1 or line.text.startswith(HEADER_TEXT):
                if (trace := self.feed(line)) is not None:
                    yield trace
            else:
                self.classify(line)
            start, number = newline + 1, number + 1

    def take_runs(self, text: str, start: int, number: int) -> tuple[int, int]:
        """Take at once the lines from `start` (numbered from `number`) that `feed` would take one by one with the
        same effect, as far as searches over the text decide: the rest of the current block, then the blocks that
        follow while each is found whole by one search. Returns where it stopped and that line's number. Nothing
        is taken while an output is pending (whether it is the reply's or aider's is for `feed` to decide)."""
        block = self.block
        if self.pending is not None:
            return start, number
        if block is not None:
            end = self.take_block_lines(block, text, start)
            number += text.count("\n", start, end)
            if block.kind == "assistant" or (block.open_output and not block.closing):
                return end, number
            start = end
        return self.take_blocks(text, start, number)

    def take_block_lines(self, block: Block, text: str, start: int) -> int:
        """The lines from `start` that continue the current block, found by one search: a reply's lines up to a
        header or a line led by `#` or `>` after a blank line (blank ones included, counted in `blanks` when they
        end the run); a multi-line output's lines through the first that may end it; single-line outputs after
        output; user input after input."""
        if block.kind == "assistant":
            end = reply_run_end(text, start, self.blanks > 0)
            if end != start:
                blanks, all_blank = trailing_blank_lines(text, start, end)
                self.blanks = self.blanks + blanks if all_blank else blanks
        elif block.open_output:
            if block.closing:
                return start
            end, block.closing = open_output_run_end(text, start)
        else:
            end = (closed_output_run_end if block.kind == "tool" else user_run_end)(text, start)
            if end != start:
                self.blanks = 0
        if end != start:
            block.parts.append(text[start:end - 1])
        return end

    def take_blocks(self, text: str, start: int, number: int) -> tuple[int, int]:
        """From a point with no block open, or at the end of user input or of an output (one that may have
        ended): blank lines, which close that block, then the next block (`take_new_block`), and so on while
        each is taken whole. Stops where a line needs `classify` or `feed`; line 1 always does, for the mode line
        that may be there."""
        while True:
            end = blank_run_end(text, start)
            if end != start:
                blank_lines = text.count("\n", start, end)
                self.blanks += blank_lines
                number += blank_lines
                start = end
                self.close_block()
            elif self.block is not None or start == len(text):
                return start, number
            if start == len(text) or number == 1:
                return start, number
            end = self.take_new_block(text, start, number)
            if end == start:
                return start, number
            number += text.count("\n", start, end)
            start = end

    def take_new_block(self, text: str, start: int, number: int) -> int:
        """The block that the lines from `start` (numbered from `number`) open with no block open, with its first
        run of lines if one search finds it: user input, outputs on one line each, or a reply not led by `#` or
        `>`. Input and outputs followed by a blank line are taken whole, made into their message at once without
        a `Block`; the others stay open. Returns where the run stops (`start` if there is none)."""
        kind: Kind = "user" if text[start] == "#" else "tool" if text[start] == ">" else "assistant"
        end = (user_run_end(text, start) if kind == "user" else closed_output_run_end(text, start)
               if kind == "tool" else reply_run_end(text, start, False))
        if end == start:
            return start
        if kind == "assistant":
            self.block = Block(kind=kind, start=number, parts=[text[start:end - 1]])
            self.blanks = trailing_blank_lines(text, start, end)[0]
            return end
        self.blanks = 0
        if blank_run_end(text, end) == end:  # the next line decides whether the block goes on
            self.block = Block(kind=kind, start=number, parts=[text[start:end - 1]])
        else:
            self.add_block(kind, number, text[start:end - 1])
        return end

    def feed(self, line: Line) -> Trace | None:
        """Take one line; returns the previous session when this line is a session header."""
        if line.problem and line.problem.startswith("truncated"):
            self.session.meta["truncated"] = True
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
        if block.problem is not None:
            self.log.record()
            number, reason = block.problem
            self.log.reject_at(self.where(number), reason, block.raw())
            return
        self.add_block(block.kind, block.start, block.raw())

    def add_block(self, kind: Kind, start: int, raw: str) -> None:
        """A sound block of `kind` whose lines, the first numbered `start`, are `raw`: the session's next message,
        or its banner."""
        self.log.record()
        self.log.use()
        text = block_text(kind, raw)
        if kind == "tool" and not self.session.messages and "headerless" not in self.session.meta:
            self.add_banner(text)
        else:
            message = self.message(kind, start, raw, text)
            self.session.messages.append(message)
            if message["role"] != "tool":
                self.session.last_action = message

    def add_banner(self, text: str) -> None:
        """The output that opens a session: version, model, edit format and weak model, and an excerpt."""
        session, lines = self.session, "\n" + text
        version, model, weak = VERSION.search(lines), MODEL.search(lines), WEAK_MODEL.search(lines)
        session.agent_version = session.agent_version or (version.group(1) if version else None)
        session.model = session.model or (model.group(1) if model else None)
        found = {"edit_format": model.group(2) if model else None,
                 "weak_model": (model.group(3) if model else None) or (weak.group(1) if weak else None)}
        for key, value in found.items():
            if value:
                session.meta.setdefault(key, value)
        banner = session.meta.get("banner", "")
        session.meta["banner"] = (banner + "\n" + text if banner else text)[:RAW_EXCERPT_CHARS]

    def message(self, kind: Kind, start: int, raw: str, text: str) -> MessageFields:
        """The message of a block of `kind` whose lines, the first numbered `start`, are `raw`, and whose text is
        `text`."""
        where = {"format": NAME, "file": self.file, "line": start}
        if kind == "assistant":
            return {"role": "assistant", "content": text, "tool_calls": edit_calls(raw, start), "provenance": where}
        if kind == "user":
            return {"role": "user", "content": text, "provenance": where}
        return {"role": "tool", "tool_result": output_result(text, self.session.last_action), "provenance": where}

    def finish(self) -> Trace | None:
        """Close the current block and return the session (a headerless one only if it has messages)."""
        if self.pending is not None:
            self.settle_pending(Line(0, ""))
        self.close_block()
        session = self.session
        if "headerless" in session.meta and not session.messages:
            return None
        task = next((message["content"] for message in session.messages
                     if message["role"] == "user" and not message["content"].startswith("/")), None)
        return Trace(trace_id=f"{self.path.stem}:{session.start}", format=NAME, source=self.file,
                    messages=session.messages, task=task, model=session.model, agent_version=session.agent_version,
                    started_at=session.started_at, meta={**session.meta, "tool_calls_in_content": True})


FORMAT = TraceFormat(NAME, "Aider .aider.chat.history.md, one session per `# aider chat started at` header",
                     detect, read)


@hookimpl
def register_trace_formats(register: Register) -> None:
    register(FORMAT)
