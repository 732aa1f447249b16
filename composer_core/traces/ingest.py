"""Ingestion: expand paths, detect each one's format, stream its traces, account for every record and file.

Folders are walked without ever entering a folder twice (a symbolic link loop, or two links to one folder)
and no file is read twice (the same file reached through a link): what is passed over is counted by reason.
Only regular files are opened: a FIFO, socket or device found in a folder is rejected with its path instead
of blocking the walk, and one named on the command line is refused before anything is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from composer_core.files import check_input
from composer_core.plugins import registries
from composer_core.traces.contracts import Provenance, Trace
from composer_core.traces.formats import FileInHand, IngestLog, TraceFormat

SEEN_FOLDER = "folder already walked (a symbolic link loop, or a second link to it)"
SEEN_FILE = "file already read through another path (a symbolic or hard link to it)"
HIDDEN_FOLDER = "hidden folder (name starts with a dot)"
HIDDEN_FILE = "hidden file that no trace format recognises"


def detect_format(path: Path, status: os.stat_result | None = None) -> TraceFormat | None:
    """The first registered format whose `detect` accepts the path, or None (the file's status and first bytes
    read once for all formats; `status` is the path's, when the caller has it)."""
    with FileInHand(path, status):
        for entry in registries().trace_formats:
            if entry.item.detect(path):
                return entry.item
    return None


def check_named_paths(paths: Iterable[str | Path]) -> None:
    """Refuse a named path that does not exist or is neither a folder nor a regular file (a FIFO, a device):
    the caller learns before any output is opened, instead of a walk that blocks or a silent reject."""
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            check_input(path, "trace path")


def expand(paths: Iterable[str | Path], log: IngestLog | None = None) -> Iterator[Path]:
    """Regular files and format folders under the given paths, in a stable order, each real one once.

    A folder that a format recognises as a whole (one file per event) is yielded as the folder; other
    folders are walked. A named path that does not exist is yielded as is, so ingestion reports it. What
    the walk passes over (folders and files already seen, hidden entries) is counted in `log.files_skipped`;
    what it cannot read (FIFOs, sockets, devices, broken links) is rejected with its path.
    """
    for path, _ in _walk(paths, log if log is not None else IngestLog()):
        yield path


def _walk(paths: Iterable[str | Path], log: IngestLog) -> Iterator[tuple[Path, os.stat_result | None]]:
    """`expand`, each path with the status the walk took of it (None for a named path it could not stat)."""
    walk = _Walk(log)
    for raw in paths:
        yield from walk.named(Path(raw))


class _Walk:
    """One walk over folders: the (device, inode) of every folder entered and every file yielded."""

    def __init__(self, log: IngestLog) -> None:
        self.log = log
        self.folders: set[tuple[int, int]] = set()
        self.files = _InodeSet()

    def named(self, path: Path) -> Iterator[tuple[Path, os.stat_result | None]]:
        """A path the caller named: one that cannot be stat'ed is yielded as is, without a status."""
        try:
            info = path.stat()
        except OSError:
            yield path, None
            return
        yield from self._entry(path, info, named=True)

    def _entry(self, path: Path, info: os.stat_result, named: bool) -> Iterator[tuple[Path, os.stat_result]]:
        """A folder walked, a regular file yielded (once), anything else rejected."""
        if stat.S_ISREG(info.st_mode):
            if self._first_sight(path, info, named):
                yield path, info
        elif stat.S_ISDIR(info.st_mode):
            yield from self._folder(path, info, named)
        else:
            self._reject(path, "not a regular file (a FIFO, socket or device): not read, reading it could block")

    def _folder(self, path: Path, info: os.stat_result, named: bool) -> Iterator[tuple[Path, os.stat_result]]:
        key = (info.st_dev, info.st_ino)
        if key in self.folders:
            self.log.skip_file(SEEN_FOLDER)
            return
        if not named and path.name.startswith("."):
            self.log.skip_file(HIDDEN_FOLDER)
            return
        self.folders.add(key)
        if detect_format(path, info) is not None:
            yield path, info
            return
        try:
            names = sorted(os.listdir(path))  # names, not paths: a folder of many small files costs less memory
        except OSError as error:
            self._reject(path, f"cannot list folder: {error.strerror}")
            return
        for name in names:
            child = path / name
            try:
                status = child.stat()
            except OSError as error:
                self._reject(child, f"cannot read: {error.strerror} (a broken symbolic link?)")
                continue
            if stat.S_ISREG(status.st_mode):  # `_entry`'s first case, inline: most children are files
                if self._first_sight(child, status, named=False):
                    yield child, status
            else:
                yield from self._entry(child, status, named=False)

    def _first_sight(self, path: Path, info: os.stat_result, named: bool) -> bool:
        """Whether a regular file is yielded: not when already yielded (through another link), nor when hidden
        and no format recognises it (each skip counted)."""
        if info in self.files:
            self.log.skip_file(SEEN_FILE)
            return False
        if not named and path.name.startswith(".") and detect_format(path, info) is None:
            self.log.skip_file(HIDDEN_FILE)
            return False
        self.files.add(info)
        return True

    def _reject(self, path: Path, reason: str) -> None:
        self.log.record()
        self.log.reject_at(Provenance(format="unknown", file=str(path)), reason)


class _InodeSet:
    """The files seen, by (device, inode): one integer per file in a set per device, instead of a tuple of two
    integers per file (a folder may hold tens of thousands of small session files)."""

    def __init__(self) -> None:
        self.by_device: dict[int, set[int]] = {}

    def __contains__(self, info: os.stat_result) -> bool:
        return info.st_ino in self.by_device.get(info.st_dev, ())

    def add(self, info: os.stat_result) -> None:
        self.by_device.setdefault(info.st_dev, set()).add(info.st_ino)


def ingest(paths: Iterable[str | Path], log: IngestLog, format_name: str | None = None) -> Iterator[Trace]:
    """Stream the traces of every path; files that cannot be read or recognised become rejects.

    format_name forces one format for every file (its reader then rejects what it cannot parse). A trace
    whose id an earlier trace already has (two files with one name in different folders, a copied session)
    gets the id with `~2`, `~3`... appended, its original kept in `meta.original_trace_id`, and is counted.
    """
    forced = registries().trace_formats.get(format_name) if format_name else None
    seen_ids: dict[str, int] = {}
    for path, info in _walk(paths, log):
        if info is None and not path.exists():
            log.record()
            log.reject_at(_where(path, format_name), "file not found")
            continue
        hand = FileInHand(path, info)  # detection and the reader share one status and one read of the file
        with hand:
            found = forced or detect_format(path, info)
        log.files += 1
        if found is None:
            log.record()
            log.reject_at(_where(path, format_name),
                          "no registered trace format recognises this file; see `composer-core plugins`")
            continue
        for trace in hand.each(found.read(path, log)):
            log.traces += 1
            yield _unique(trace, seen_ids, log)


def _where(path: Path, format_name: str | None) -> Provenance:
    """Where a path that yields no trace is rejected."""
    return Provenance(format=format_name or "unknown", file=str(path))


def _unique(trace: Trace, seen_ids: dict[str, int], log: IngestLog) -> Trace:
    """The trace, renamed when its id was already used in this ingestion (ids key targets and replay steps)."""
    count = seen_ids.get(trace.trace_id, 0) + 1
    seen_ids[trace.trace_id] = count
    if count == 1:
        return trace
    renamed = f"{trace.trace_id}~{count}"
    while renamed in seen_ids:
        count += 1
        renamed = f"{trace.trace_id}~{count}"
    seen_ids[renamed] = 1
    log.trace_ids_renamed += 1
    return trace.model_copy(update={"trace_id": renamed, "meta": {**trace.meta, "original_trace_id": trace.trace_id}})

