"""The lines of an aider chat history: the file read as text, the kinds of line, and runs of lines of one kind.

Reading: the file is read READ_BYTES at a time and cut into blocks of whole lines, split on `\\n` only (so numbers
match an editor's) and decoded a block at a time. A clean block (UTF-8 without NUL bytes, the usual case) comes
as one text of whole lines. Each line of a block that is not clean, an over-long line and an unterminated last
line come one by one with what is wrong with them, if anything; nothing is raised. The reader of the pieces
numbers the lines as it takes them (it counts a clean text's lines anyway).

Runs: most lines leave the parser's state as it is, only adding themselves to the current message. The
`*_run_end` functions find with one regex or string search over a clean text where such a run of lines of one
kind stops (blank lines, a reply, single-line aider outputs, a multi-line output, user input), so that the
parser classifies one at a time only the lines where its state may change. Each takes the lines from a line's
start and returns the start of the line where the run stops; whitespace is Python's (`str.isspace`, which the
regex class `\\s` matches exactly), so a run's lines are those the parser's line tests would take.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

MAX_LINE_BYTES = 1 << 20
READ_BYTES = 1 << 16  # read at a time: what a block of lines holds, unless a line is longer
HEADER_TEXT = "# aider chat started at "
LINE_END_CRS = re.compile("\r+\n")  # a text-mode read would drop these CRs too
# Runs in a clean text, each from the start of a line. `[^\S\n]` is a space other than a newline.
BLANK_RUN = re.compile(r"(?:[^\S\n]*\n)*")
USER_RUN = re.compile(r"(?:####(?: [^\n]*|[^\S\n]*)\n)*")  # `is_user_line`
CLOSED_OUTPUT_RUN = re.compile(r"(?:>(?: [^\n]*|[^\S\n]*)  \n)*")  # `is_output_line`, ending in two spaces
# Where a reply may end: a line led by `#` or `>` after a blank line (the newline before the blank line, through
# the one after it), or a session header (the newline before it).
REPLY_STOP = re.compile(r"\n[^\S\n]*\n(?=[#>])|\n(?=" + re.escape(HEADER_TEXT) + ")")
BLANK_BEFORE_STOP = re.compile(r"[^\S\n]*\n(?=[#>])")  # a blank line at the start, then a line led by `#` or `>`
LED_BY = ("#", ">")
HEADER_LINE_START = "\n" + HEADER_TEXT
OUTPUT_END = "  \n"


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


def blank_run_end(text: str, start: int) -> int:
    """Where the blank (empty or whitespace-only) lines from `start` stop."""
    return BLANK_RUN.match(text, start).end()  # type: ignore[union-attr]  # `*` always matches


def user_run_end(text: str, start: int) -> int:
    """Where the user input lines (`is_user_line`) from `start` stop."""
    return USER_RUN.match(text, start).end()  # type: ignore[union-attr]


def closed_output_run_end(text: str, start: int) -> int:
    """Where the aider output lines from `start` that end in two spaces (each output on one line) stop."""
    return CLOSED_OUTPUT_RUN.match(text, start).end()  # type: ignore[union-attr]


def reply_run_end(text: str, start: int, after_blank: bool) -> int:
    """Where the reply lines from `start` stop: before a session header, or before a line led by `#` or `>`
    that follows a blank line (`after_blank`: the line before `start` was blank). Those are the only lines
    that can end a reply; every other line continues it."""
    if text.startswith(HEADER_TEXT, start) or (after_blank and text.startswith(LED_BY, start)):
        return start
    if blank := BLANK_BEFORE_STOP.match(text, start):
        return blank.end()
    stop = REPLY_STOP.search(text, start)
    return len(text) if stop is None else stop.end()


def open_output_run_end(text: str, start: int) -> tuple[int, bool]:
    """Where a multi-line output's lines from `start` stop: after the first line that may end it (`ends_output`;
    then True), or before a session header, or at the end of the text."""
    if text.startswith(HEADER_TEXT, start):
        return start, False
    end, closing = len(text), False
    found = text.find(OUTPUT_END, start)
    while found != -1:
        # the character before the two spaces: in the line unless the line is just them (then `start` or a newline)
        if found > start and not text[found - 1].isspace():
            end, closing = found + len(OUTPUT_END), True
            break
        found = text.find(OUTPUT_END, found + 1)
    header = text.find(HEADER_LINE_START, start, end)
    return (end, closing) if header == -1 else (header + 1, False)


def trailing_blank_lines(text: str, start: int, end: int) -> tuple[int, bool]:
    """How many of the lines between `start` and `end` at their end are blank, and whether all of them are."""
    count, line_end = 0, end - 1
    while line_end >= start:
        line_start = max(text.rfind("\n", start, line_end) + 1, start)
        if text[line_start:line_end].strip():
            return count, False
        count, line_end = count + 1, line_start - 1
    return count, True


Piece = str | tuple[str, str | None]  # clean whole lines, each with its newline; or one line and its problem


def pieces(stream: IO[bytes]) -> Iterator[Piece]:
    """The file as clean texts of whole lines and single lines, in order."""
    for block in line_blocks(stream):
        yield from decode_block(block)


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


def decode_block(block: bytes | None) -> Iterator[Piece]:
    """A block (None: an over-long line), decoded at once when it is clean UTF-8 without NUL bytes (the usual
    case), else line by line so that each bad line is flagged on its own; an unterminated last line comes on
    its own, flagged as truncated."""
    if block is None:
        yield "", f"line longer than {MAX_LINE_BYTES} bytes"
        return
    try:
        text = block.decode("utf-8") if b"\x00" not in block else None
    except UnicodeDecodeError:
        text = None
    if text is None:
        yield from decode_lines(block)
        return
    cut = text.rfind("\n") + 1
    whole, last = text[:cut], text[cut:]  # last: "" after the final newline, else an unterminated last line
    if whole:
        yield LINE_END_CRS.sub("\n", whole) if b"\r" in block else whole
    if last:
        yield decode_line(last.encode("utf-8"))


def decode_lines(block: bytes) -> Iterator[tuple[str, str | None]]:
    """The lines of a block that is not clean text, each decoded and flagged on its own."""
    chunks = block.split(b"\n")
    last = chunks.pop()  # b"" after the final newline, else an unterminated last line
    for chunk in chunks:
        yield decode_line(chunk + b"\n")
    if last:
        yield decode_line(last)


def decode_line(chunk: bytes) -> tuple[str, str | None]:
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
    return text, problem
