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
from composer_core.traces.formats import IngestLog, TraceFormat, detection_pass

SEEN_FOLDER = "folder already walked (a symbolic link loop, or a second link to it)"
SEEN_FILE = "file already read through another path (a symbolic or hard link to it)"
HIDDEN_FOLDER = "hidden folder (name starts with a dot)"
HIDDEN_FILE = "hidden file that no trace format recognises"


def detect_format(path: Path) -> TraceFormat | None:
    """The first registered format whose `detect` accepts the path, or None (the file's first lines read once)."""
    with detection_pass():
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
    walk = _Walk(log if log is not None else IngestLog())
    for raw in paths:
        yield from walk.visit(Path(raw), named=True)


class _Walk:
    """One walk over folders: the (device, inode) of every folder entered and every file yielded."""

    def __init__(self, log: IngestLog) -> None:
        self.log = log
        self.folders: set[tuple[int, int]] = set()
        self.files: set[tuple[int, int]] = set()

    def visit(self, path: Path, named: bool = False) -> Iterator[Path]:
        try:
            info = path.stat()
        except OSError as error:
            if named:
                yield path
            else:
                self._reject(path, f"cannot read: {error.strerror} (a broken symbolic link?)")
            return
        if stat.S_ISDIR(info.st_mode):
            yield from self._folder(path, info, named)
        elif stat.S_ISREG(info.st_mode):
            yield from self._file(path, info, named)
        else:
            self._reject(path, "not a regular file (a FIFO, socket or device): not read, reading it could block")

    def _folder(self, path: Path, info: os.stat_result, named: bool) -> Iterator[Path]:
        key = (info.st_dev, info.st_ino)
        if key in self.folders:
            self.log.skip_file(SEEN_FOLDER)
            return
        if not named and path.name.startswith("."):
            self.log.skip_file(HIDDEN_FOLDER)
            return
        self.folders.add(key)
        if detect_format(path) is not None:
            yield path
            return
        try:
            children = sorted(path.iterdir())
        except OSError as error:
            self._reject(path, f"cannot list folder: {error.strerror}")
            return
        for child in children:
            yield from self.visit(child)

    def _file(self, path: Path, info: os.stat_result, named: bool) -> Iterator[Path]:
        key = (info.st_dev, info.st_ino)
        if key in self.files:
            self.log.skip_file(SEEN_FILE)
            return
        if not named and path.name.startswith(".") and detect_format(path) is None:
            self.log.skip_file(HIDDEN_FILE)
            return
        self.files.add(key)
        yield path

    def _reject(self, path: Path, reason: str) -> None:
        self.log.record()
        self.log.reject_at(Provenance(format="unknown", file=str(path)), reason)


def ingest(paths: Iterable[str | Path], log: IngestLog, format_name: str | None = None) -> Iterator[Trace]:
    """Stream the traces of every path; files that cannot be read or recognised become rejects.

    format_name forces one format for every file (its reader then rejects what it cannot parse). A trace
    whose id an earlier trace already has (two files with one name in different folders, a copied session)
    gets the id with `~2`, `~3`... appended, its original kept in `meta.original_trace_id`, and is counted.
    """
    forced = registries().trace_formats.get(format_name) if format_name else None
    seen_ids: dict[str, int] = {}
    for path in expand(paths, log):
        where = Provenance(format=format_name or "unknown", file=str(path))
        if not path.exists():
            log.record()
            log.reject_at(where, "file not found")
            continue
        found = forced or detect_format(path)
        log.files += 1
        if found is None:
            log.record()
            log.reject_at(where, "no registered trace format recognises this file; see `composer-core plugins`")
            continue
        for trace in found.read(path, log):
            log.traces += 1
            yield _unique(trace, seen_ids, log)


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

