"""The text of an aider message and what it means as a trace: a block's text without its line prefixes, the
SEARCH/REPLACE edits of a reply as `edit` tool calls, and the result read from aider's output after an edit or a
slash command (failed edits, failing tests, a non-zero exit code). `aider.Parser` decides where messages begin and
end; this module turns each into message fields."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

SEARCH = re.compile(r"<{5,9} SEARCH\s*")
DIVIDER = re.compile(r"={5,9}\s*")
REPLACE = re.compile(r">{5,9} REPLACE\s*")
MARKER_LEADS = (("<<<<<", SEARCH, "search"), ("=====", DIVIDER, "divider"), (">>>>>", REPLACE, "replace"))
FENCE = re.compile(r"(`{3,}|~{3,}|<source\b)")
SEARCH_TEXT = "<<<<< SEARCH"  # in every line that SEARCH matches
LONE_USER_PREFIX = re.compile(r"\n####(?=\n|\Z)")  # block_text: a user line that is just the prefix
LONE_OUTPUT_PREFIX = re.compile(r"\n>(?=\n|\Z)")  # block_text: an output line that is just the prefix
EDIT_FAILURES = ("The LLM did not conform to the edit format", "SEARCH/REPLACE block failed to match",
                 "SEARCH/REPLACE blocks failed to match")
EDIT_APPLIED = "\nApplied edit to "  # at the start of a line
FAILURE_TEXTS = ("Traceback (most recent call last)", "\nFAILED ")  # `command_failed`'s plain texts
FAILURE_PATTERNS = (re.compile(r"\.\.\.Failed\b"), re.compile(r"exit code: [1-9]"))  # and its patterns
FAILURE_COUNT = re.compile(r"[1-9]\d* (?:failed|errors?)\b")  # `failure_count` checks the word boundary before it
FAILURE_WORDS = (" failed", " error")  # in every match of FAILURE_COUNT
EXIT_CODE = re.compile(r"exit (?:code|status):? (-?\d+)", re.I)
# Under re.I, `exit` matches `x` and `t` in two cases each and `i` in four (I, i, U+0130, U+0131); lowered,
# each of those gives one of these, so a text whose lowered form holds none of them has no exit code to read.
EXIT_LOWERED = ("xit ", "x\u0131t ", "xi\u0307t ")
CHECKED_COMMANDS = ("run", "test", "lint")


Kind = Literal["user", "tool", "assistant"]
MessageFields = dict[str, Any]  # the fields of a `Message` (or of a `ToolCall`, a `ToolResult`), to validate


def block_text(kind: Kind, raw: str) -> str:
    """A block's text (its lines `raw`) without aider's line prefixes and trailing two spaces (`line_text` of
    each line). Done over the whole text at once: first every line's two spaces, then the prefixes after a
    newline (those of lines that are just the prefix before the others, which removing them cannot create),
    then the first line's."""
    if kind == "assistant":
        return raw.strip()
    prefix = "####" if kind == "user" else ">"
    if "\n" not in raw:
        return line_text(prefix, raw).strip()
    text = raw.replace("  \n", "\n").removesuffix("  ")
    if "\n" + prefix + "\n" in text or text.endswith("\n" + prefix):
        text = (LONE_USER_PREFIX if kind == "user" else LONE_OUTPUT_PREFIX).sub("\n", text)
    text = text.replace("\n" + prefix + " ", "\n")
    if text.startswith(prefix + " "):
        text = text[len(prefix) + 1:]
    elif text.startswith(prefix + "\n"):  # a first line that is just the prefix
        text = text[len(prefix):]
    return text.strip()


def line_text(prefix: str, line: str) -> str:
    """A line of user input or aider output without its two trailing spaces, then without its prefix and the
    space after it (all of a line that is then just the prefix)."""
    text = line.removesuffix("  ")
    if text.startswith(prefix + " "):
        return text[len(prefix) + 1:]
    return "" if text == prefix else text


def edit_calls(raw: str, start: int) -> list[MessageFields]:
    """SEARCH/REPLACE blocks of a reply (its lines `raw`, the first numbered `start`) as `edit` calls; an
    unterminated block keeps its raw text. Only the marker lines are visited (`edit_markers`), and the texts
    between them are cut out of `raw`."""
    if SEARCH_TEXT not in raw:
        return []
    markers, calls, path = edit_markers(raw), [], ""
    at = 0
    while at < len(markers):
        search = markers[at]
        if search.kind != "search":
            at += 1
            continue
        path = edit_path(lines_before(raw, search.start, 3)) or path
        at, arguments = edit_block(raw, markers, at, path)
        calls.append({"id": f"edit@{start + search.index}", "name": "edit", "arguments": arguments})
    return calls


class Marker(NamedTuple):
    """A SEARCH, divider or REPLACE line of a reply: its index, kind, and where it starts and ends in the text."""

    index: int
    kind: str
    start: int
    end: int


def edit_markers(raw: str) -> list[Marker]:
    """The SEARCH, divider and REPLACE lines of a reply, in order: each pattern is tried only on the lines that
    start with five of its first character, found by plain text searches."""
    found = []
    for lead, pattern, kind in MARKER_LEADS:
        for line_start in lines_led_by(raw, lead):
            line_end = raw.find("\n", line_start)
            line_end = len(raw) if line_end == -1 else line_end
            if pattern.fullmatch(raw, line_start, line_end):
                found.append((line_start, line_end, kind))
    markers, index, counted = [], 0, 0
    for line_start, line_end, kind in sorted(found):
        index += raw.count("\n", counted, line_start)
        counted = line_start
        markers.append(Marker(index, kind, line_start, line_end))
    return markers


def lines_led_by(text: str, lead: str) -> Iterator[int]:
    """Where the lines of `text` that start with `lead` start."""
    if text.startswith(lead):
        yield 0
    at = text.find("\n" + lead)
    while at != -1:
        yield at + 1
        at = text.find("\n" + lead, at + 1)


def lines_before(text: str, end: int, count: int) -> list[str]:
    """The (up to) `count` lines before the line that starts at `end`."""
    start = end
    for _ in range(count):
        if start == 0:
            break
        start = text.rfind("\n", 0, start - 1) + 1
    return text[start:end - 1].split("\n") if start < end else []


def edit_path(before: list[str]) -> str | None:
    """The file name aider expects just before a block (skipping the fence line), if one is there: `before` are
    the lines before the block's SEARCH line."""
    for text in reversed(before):
        stripped = text.strip()
        if not stripped or FENCE.match(stripped):
            continue
        name = stripped.strip("`*#:").strip()
        return name if name and " " not in name else None
    return None


def edit_block(raw: str, markers: list[Marker], at: int, path: str) -> tuple[int, dict[str, Any] | str]:
    """Parse the block whose SEARCH line is `markers[at]`: (the marker after it, {path, search, replace}); an
    unterminated block (a new SEARCH before its divider, or no REPLACE) gives its raw text instead of the
    arguments. The lines between two marker lines are the text from after the first's newline to before the
    newline that ends the line before the second (empty when they are adjacent)."""
    search, divider = markers[at], None
    for after in range(at + 1, len(markers)):
        marker = markers[after]
        if divider is None and marker.kind == "search":
            return after, raw[search.start:marker.start - 1]
        if divider is None and marker.kind == "divider":
            divider = marker
        elif divider is not None and marker.kind == "replace":
            return after + 1, {"path": path, "search": raw[search.end + 1:divider.start - 1],
                               "replace": raw[divider.end + 1:marker.start - 1]}
    return len(markers), raw[search.start:]


def output_result(text: str, action: MessageFields | None) -> MessageFields:
    """Aider output as a tool result, named and judged by what it answers (`action`: the latest user or
    assistant message): the edits of a reply (also a whole-file reply, whose edits are not parsed into calls),
    a slash command, or else aider itself."""
    if action is not None and action["role"] == "assistant":
        failed = any(failure in text for failure in EDIT_FAILURES)
        calls = action["tool_calls"]
        if calls or failed or text.startswith(EDIT_APPLIED[1:]) or EDIT_APPLIED in text:
            return {"call_id": calls[0]["id"] if calls else None, "name": "edit", "output": text, "is_error": failed}
    command = slash_command(action)
    if command is None:
        return {"name": "aider", "output": text}
    if command not in CHECKED_COMMANDS:
        return {"name": command, "output": text}
    return {"name": command, "output": text, "exit_code": exit_code(text), "is_error": command_failed(text)}


def command_failed(text: str) -> bool:
    """Whether a command's output reads as failed: a traceback, a `FAILED ` line, a count of failures or errors,
    `...Failed`, or a non-zero `exit code: `. Searched one by one, since each search can then skip ahead to
    its literal text, where one alternation of them all would try every position of long test outputs."""
    return (text.startswith("FAILED ") or any(part in text for part in FAILURE_TEXTS)
            or any(pattern.search(text) for pattern in FAILURE_PATTERNS) or failure_count(text))


def failure_count(text: str) -> bool:
    """A number of failures or errors (`2 failed`, `1 error`) that starts a word: the pattern finds the numbers and
    the word boundary before them is checked here (what `\\b` sees: a word character is alphanumeric or `_`), so
    that the search skips ahead to digits; none is looked for without FAILURE_WORDS in the text."""
    if not any(word in text for word in FAILURE_WORDS):
        return False
    for match in FAILURE_COUNT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if not (before.isalnum() or before == "_"):
            return True
    return False


def slash_command(action: MessageFields | None) -> str | None:
    """The command of a `/command ...` user message."""
    if action is None or action["role"] != "user" or not action["content"].startswith("/"):
        return None
    name = action["content"][1:].split(maxsplit=1)
    return name[0] if name else None


def exit_code(text: str) -> int | None:
    """The first non-zero exit code reported in the output, else 0 when only zeros are, else None (at once when
    the lowered text lacks EXIT_LOWERED: lowering and looking for plain text is far quicker than the search)."""
    lowered = text.lower()
    if not any(word in lowered for word in EXIT_LOWERED):
        return None
    codes = [int(match.group(1)) for match in EXIT_CODE.finditer(text)]
    return next((code for code in codes if code != 0), 0 if codes else None)
