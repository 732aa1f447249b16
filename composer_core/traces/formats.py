"""The trace-format plugin contract, the ingestion log (read / used / skipped / rejected), and detection.

A format is registered through the `register_trace_formats` hook as a `TraceFormat`: a cheap `detect`
that looks at a path (a file, or a folder for formats stored as one file per event) and a streaming
`read` that yields one `Trace` at a time and accounts for every record it sees in an `IngestLog`.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import msgspec
from pydantic import TypeAdapter, ValidationError

from composer_core.traces.contracts import Provenance, Reject, Trace

HEAD_BYTES = 8192
PROBE_BYTES = 1 << 16  # read at once from the file in hand: what most `head`s ask for, all of a small file
DETECT_LINES = 20  # non-blank lines `leading_json_objects` reads
DETECT_LINE_BYTES = 1 << 20  # a longer line is skipped unparsed
DETECT_BUDGET_BYTES = 4 << 20  # bytes read in all, however long the lines
_VALIDATE_DATETIME = TypeAdapter(datetime).validator.validate_python  # the adapter's own wrapper costs as much again
_IN_HAND: ContextVar[_Probe | None] = ContextVar("file_in_hand", default=None)
_END = object()
Item = TypeVar("Item")

# JSON is parsed with msgspec, falling back to the stdlib for what msgspec refuses. Measured on the shared trace
# samples (benchmarks/ingestion.py, docs/performance.md), msgspec and orjson both parse several times faster than
# the stdlib; msgspec is chosen because it gives the stdlib's values, integers beyond 64 bits included (orjson
# turns those into floats without a word). What msgspec refuses and the stdlib accepts (NaN and Infinity
# literals, lone surrogate escapes, numbers beyond the float range, bytes that are not UTF-8) is parsed again
# by the stdlib on the text decoded as before, so every input reads as it did and a malformed one is reported
# with the stdlib's message, line and column. The one change: a lone surrogate reads as U+FFFD (see `loads`).
_MSGSPEC_DECODE = msgspec.json.Decoder().decode
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a surrogate's escape, lone or in a pair
_SURROGATE = re.compile("[\ud800-\udfff]")
JSON_PARSER = f"msgspec {msgspec.__version__}, stdlib json where msgspec refuses"


@dataclass
class IngestLog:
    """Accounts for every record: read, then used, skipped (a known type that carries nothing to train on,
    counted by type) or rejected (kept aside with its location; written to `rejects_file` as it happens)."""

    rejects_file: IO[str] | None = None
    read: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    traces: int = 0
    files: int = 0
    files_skipped: Counter[str] = field(default_factory=Counter)
    trace_ids_renamed: int = 0
    examples: list[Reject] = field(default_factory=list)

    def record(self, count: int = 1) -> None:
        self.read += count

    def use(self, count: int = 1) -> None:
        self.used += count

    def skip(self, kind: str, count: int = 1) -> None:
        self.skipped[kind] += count

    def skip_file(self, reason: str) -> None:
        """A path not read on purpose (its content is read elsewhere, or it is not a trace): counted by reason."""
        self.files_skipped[reason] += 1

    def reject(self, reject: Reject) -> None:
        self.rejected[reject.reason.split(":")[0]] += 1
        if len(self.examples) < 20:
            self.examples.append(reject)
        if self.rejects_file is not None:
            self.rejects_file.write(reject.model_dump_json() + "\n")

    def reject_at(self, provenance: Provenance, reason: str, raw: object = "") -> None:
        self.reject(Reject.of(provenance, reason, raw))

    def summary(self) -> dict[str, Any]:
        return {"files": self.files, "traces": self.traces, "records_read": self.read, "records_used": self.used,
                "records_skipped": sum(self.skipped.values()), "records_rejected": sum(self.rejected.values()),
                "skipped_by_kind": dict(self.skipped), "rejected_by_reason": dict(self.rejected),
                "files_skipped": sum(self.files_skipped.values()), "files_skipped_by_reason": dict(self.files_skipped),
                "trace_ids_renamed": self.trace_ids_renamed}


@dataclass(frozen=True)
class TraceFormat:
    """A registered trace format."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, IngestLog], Iterator[Trace]]


def loads(data: bytes | str) -> Any:
    """One JSON value from UTF-8 bytes or text, as `json.loads` of the text (bytes decoded with replacement
    characters) gives it, except that a lone surrogate escape (`"\\ud800"`) reads as U+FFFD, the replacement
    character bad bytes get: no UTF-8 output (a trace, a reject) can hold it. Raises `json.JSONDecodeError` on
    malformed input, and on input nested too deeply to parse (which would otherwise escape as a RecursionError and
    stop the whole ingestion)."""
    try:
        try:
            return _MSGSPEC_DECODE(data)
        except (msgspec.DecodeError, UnicodeEncodeError):
            text = _as_text(data)
            value = json.loads(text)
            return _replace_lone_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", _as_text(data), 0) from None


def _replace_lone_surrogates(value: Any) -> Any:
    """`value` with every surrogate code point in its strings (keys included) replaced by U+FFFD; a surrogate
    left after `json.loads` is a lone one (an escaped pair reads as one character)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_lone_surrogates(key): _replace_lone_surrogates(item) for key, item in value.items()}
    return value


def _as_text(data: bytes | str) -> str:
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data


def head(path: Path, size: int = HEAD_BYTES) -> str:
    """The first bytes of a file as text (for detection); empty for folders and unreadable files."""
    probe = _in_hand(path)
    if probe is not None:
        return probe.text(size)
    if not path.is_file():
        return ""
    return _read_start(path, size).decode("utf-8", errors="replace")


def tail(path: Path, size: int) -> str:
    """The last `size` bytes of a file as text (for detection); empty for unreadable files."""
    whole = _whole_in_hand(path)
    if whole is not None:
        return whole.start[max(0, len(whole.start) - size):].decode("utf-8", errors="replace")
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - size))
            return stream.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _read_start(path: Path, size: int) -> bytes:
    """The first `size` bytes of a file (all of it when shorter); empty when it cannot be opened or read. Plain
    system calls: on a small file, a buffered file object costs more than the read itself."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        parts = []
        while size > 0 and (part := os.read(descriptor, size)):
            parts.append(part)
            size -= len(part)
        return b"".join(parts)
    except OSError:
        return b""
    finally:
        os.close(descriptor)


def is_regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (following links): only those are opened, since reading a FIFO, a
    socket or a device could block forever."""
    probe = _in_hand(path)
    if probe is not None:
        return probe.regular
    return _is_regular(_status(path))


def _status(path: Path) -> os.stat_result | None:
    """The path's status (following links), or None when it cannot be had."""
    try:
        return path.stat()
    except OSError:
        return None


def _is_regular(status: os.stat_result | None) -> bool:
    return status is not None and stat.S_ISREG(status.st_mode)


class _Probe:
    """The file in hand as detection and its reader see it: its status, its first bytes (all of them for a small
    file) and the JSON objects of its first lines, each had once instead of once per format (and the objects
    parsed once for detection and reading both)."""

    __slots__ = ("objects", "parsed", "path", "regular", "size", "start", "texts", "whole")

    def __init__(self, path: Path, status: os.stat_result | None) -> None:
        self.path = path
        self.regular = _is_regular(status)
        self.size = status.st_size if status is not None else 0
        self.start = b""
        self.whole = not self.regular  # what is not a regular file is never read: its bytes are none
        self.texts: dict[int, str] = {}
        self.objects: tuple[dict[str, Any], ...] | None = None
        self.parsed: dict[bytes, dict[str, Any]] = {}  # leading line -> its object, until the reader takes it

    def first(self, size: int) -> bytes:
        """The first `size` bytes: read once, at least PROBE_BYTES of them, then sliced."""
        if len(self.start) < size and not self.whole:
            wanted = max(size, PROBE_BYTES)
            self.start = _read_start(self.path, wanted)
            self.whole = len(self.start) < wanted
        return self.start[:size]

    def text(self, size: int) -> str:
        """`head(path, size)`, decoded once per size."""
        if size not in self.texts:
            self.texts[size] = self.first(size).decode("utf-8", errors="replace")
        return self.texts[size]

    def leading_objects(self) -> tuple[dict[str, Any], ...]:
        """`leading_json_objects`: from the bytes in hand when they are the whole file (a small file is read whole
        for it), else read from the file."""
        if self.objects is None:
            if self.size <= PROBE_BYTES:
                self.first(PROBE_BYTES)
            if self.whole and len(self.start) < DETECT_LINE_BYTES:  # then no line can pass a bound
                self.objects = self._parse_leading_lines()
            else:
                self.objects = _read_leading_json_objects(self.path)
        return self.objects

    def _parse_leading_lines(self) -> tuple[dict[str, Any], ...]:
        """The objects of the first lines of the whole file in hand, each kept by its line for the reader."""
        found = []
        for line in _first_lines(self.start, DETECT_LINES):
            value = _json_object(line)
            if value is not None:
                found.append(value)
                self.parsed.setdefault(line, value)
        return tuple(found)


def _in_hand(path: Path) -> _Probe | None:
    """The probe of the file in hand when that file is `path`, else None."""
    probe = _IN_HAND.get()
    return probe if probe is not None and (probe.path is path or probe.path == path) else None


class FileInHand:
    """While open (a `with` block), the file at `path` is looked at once by detection and by its reader together:
    every format's `detect` shares one status (`status` when the caller has it, following links) and one read of
    its first bytes, and `load_json` and `jsonl_records` take those bytes when they are the whole file (a small
    file) instead of opening it again. Entered for the file already in hand, it keeps that one. Open only while
    code runs, never across a `yield` (see `each`): no caller ever sees a file in hand that is not its own."""

    __slots__ = ("path", "previous", "probe", "status")

    def __init__(self, path: Path, status: os.stat_result | None = None) -> None:
        self.path = path
        self.status = status
        self.probe: _Probe | None = None

    def __enter__(self) -> None:
        self.previous = _IN_HAND.get()
        if _in_hand(self.path) is None:
            if self.probe is None:
                self.probe = _Probe(self.path, self.status if self.status is not None else _status(self.path))
            _IN_HAND.set(self.probe)

    def __exit__(self, *_: object) -> None:
        _IN_HAND.set(self.previous)

    def each(self, items: Iterator[Item]) -> Iterator[Item]:
        """The items of a reader, the file in hand while the reader makes each, not while the caller holds it."""
        while True:
            with self:
                item = next(items, _END)
            if item is _END:
                return
            yield item


def _whole_in_hand(path: Path) -> _Probe | None:
    """The probe of `path` when it is the file in hand and holds all of its bytes (a small file detection read),
    else None."""
    probe = _in_hand(path)
    return probe if probe is not None and probe.regular and probe.whole else None


def leading_json_objects(path: Path) -> tuple[dict[str, Any], ...]:
    """The JSON objects among the first DETECT_LINES non-blank lines of a file, reading at most
    DETECT_BUDGET_BYTES (shared while the file is in hand: to be read, never changed).

    For detection: a corrupt, truncated or over-long first line (over DETECT_LINE_BYTES, skipped unparsed)
    does not hide the lines after it, and no file, however large its lines, costs more than the budget.
    """
    probe = _in_hand(path)
    if probe is not None:
        return probe.leading_objects()
    return _read_leading_json_objects(path)


def _read_leading_json_objects(path: Path) -> tuple[dict[str, Any], ...]:
    if not is_regular_file(path):
        return ()
    found: list[dict[str, Any]] = []
    try:
        with path.open("rb") as stream:
            for line in _bounded_lines(stream, DETECT_LINES, DETECT_BUDGET_BYTES, DETECT_LINE_BYTES):
                value = _json_object(line)
                if value is not None:
                    found.append(value)
    except OSError:
        pass
    return tuple(found)


def _json_object(line: bytes) -> dict[str, Any] | None:
    """The line's JSON object, or None when it is not one (or not JSON)."""
    try:
        value = loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _first_lines(data: bytes, lines: int) -> list[bytes]:
    """The first `lines` non-blank lines of `data` (with their `\\n`), as `_bounded_lines` reads them from a file
    of that content when no line or budget bound is reached."""
    found: list[bytes] = []
    start, end = 0, len(data)
    while start < end and len(found) < lines:
        stop = data.find(b"\n", start) + 1 or end
        line = data[start:stop]
        if not line.isspace():
            found.append(line)
        start = stop
    return found


def _bounded_lines(stream: IO[bytes], lines: int, budget: int, line_limit: int) -> Iterator[bytes]:
    """Up to `lines` whole non-blank lines of at most `line_limit` bytes, within `budget` bytes read in all."""
    spent = 0
    while lines > 0 and spent < budget:
        line = stream.readline(min(line_limit, budget - spent))
        if not line:
            return
        spent += len(line)
        if not line.endswith(b"\n") and len(line) == line_limit:  # over-long: drain it within the budget
            while spent < budget and (rest := stream.readline(min(line_limit, budget - spent))):
                spent += len(rest)
                if rest.endswith(b"\n"):
                    break
            lines -= 1
            continue
        if line.strip():
            lines -= 1
            yield line


def parse_time(value: Any) -> datetime | None:
    """A timestamp (ISO 8601 text or epoch seconds) as a datetime, or None when absent or unparseable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return _VALIDATE_DATETIME(value)
    except ValidationError:
        return None


def jsonl_records(path: Path, format_name: str, log: IngestLog, *,
                  allow_arrays: bool = False) -> Iterator[tuple[Provenance, Any]]:
    """Stream the objects (and, with allow_arrays, the arrays) of a JSONL file with their provenance; malformed
    lines and other values (a truncated last line included) are rejected with their line number, never raised."""
    file = str(path)
    whole = _whole_in_hand(path)
    parsed = whole.parsed if whole is not None else {}  # what detection parsed: taken, each object once
    with path.open("rb") if whole is None else io.BytesIO(whole.start) as stream:
        for number, line in enumerate(text_mode_lines(stream), start=1):
            if line.isspace():  # never empty
                continue
            try:
                value = parsed.pop(line, None) if parsed else None
                if value is None:
                    value = loads(line)
            except json.JSONDecodeError as error:
                text = line.decode("utf-8", errors="replace")
                if not text.strip():  # blank but for Unicode whitespace: not a record either
                    continue
                log.record()
                where = Provenance(format=format_name, file=file, line=number)
                log.reject_at(where, f"malformed JSON: {error.msg} at column {error.colno}", text)
                continue
            log.record()
            where = Provenance(format=format_name, file=file, line=number)
            if not (isinstance(value, dict) or (allow_arrays and isinstance(value, list))):
                log.reject_at(where, f"not a JSON object: a {type(value).__name__}",
                              line.decode("utf-8", errors="replace"))
                continue
            yield where, value


def text_mode_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of a binary stream as a text-mode file gives them: `\\r\\n` and a lone `\\r` end a line too,
    and each line ends in `\\n` (the last one may have none). Split in bytes, so each line is decoded only when
    it has to be."""
    for chunk in stream:
        if b"\r" not in chunk:
            yield chunk
            continue
        for piece in chunk.splitlines(keepends=True):
            body = piece.rstrip(b"\r\n")
            yield body + b"\n" if len(body) < len(piece) else body


def load_json(path: Path, format_name: str, log: IngestLog) -> Any | None:
    """Parse a whole JSON file (one session); a truncated or malformed file, or a path that is not a regular file,
    is one reject, and None."""
    log.record()
    if not is_regular_file(path):
        log.reject_at(Provenance(format=format_name, file=str(path)),
                      "not a regular file: not read (reading a FIFO, socket or device could block)")
        return None
    try:
        whole = _whole_in_hand(path)
        return loads(_universal_newlines(path.read_bytes() if whole is None else whole.start))
    except json.JSONDecodeError as error:
        log.reject_at(Provenance(format=format_name, file=str(path)),
                      f"malformed JSON file: {error.msg} at line {error.lineno} (truncated?)", head(path, 500))
        return None


def _universal_newlines(data: bytes) -> bytes:
    """`\\r\\n` and lone `\\r` as `\\n`, as a text-mode read gives them (so errors name the same line)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in data else data


def parse_arguments(raw: Any) -> dict[str, Any] | str:
    """Tool-call arguments as a dict when they are (or parse as) a JSON object, else the raw text."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = loads(raw)
        except json.JSONDecodeError:
            return raw
        return value if isinstance(value, dict) else raw
    return "" if raw is None else json.dumps(raw)
