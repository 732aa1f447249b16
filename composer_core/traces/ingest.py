"""Ingestion: expand paths, detect each one's format, stream its traces, account for every record."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from composer_core.plugins import registries
from composer_core.traces.contracts import Provenance, Trace
from composer_core.traces.formats import IngestLog, TraceFormat


def detect_format(path: Path) -> TraceFormat | None:
    """The first registered format whose `detect` accepts the path, or None."""
    for entry in registries().trace_formats:
        if entry.item.detect(path):
            return entry.item
    return None


def expand(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files and format folders under the given paths, in a stable order.

    A folder that a format recognises as a whole (one file per event) is yielded as the folder; other
    folders are walked. A path that does not exist is yielded as is, so ingestion reports it.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and detect_format(path) is None:
            children = sorted(path.iterdir())
            yield from expand(child for child in children if not child.name.startswith("."))
        else:
            yield path


def ingest(paths: Iterable[str | Path], log: IngestLog, format_name: str | None = None) -> Iterator[Trace]:
    """Stream the traces of every path; files that cannot be read or recognised become rejects.

    format_name forces one format for every file (its reader then rejects what it cannot parse).
    """
    forced = registries().trace_formats.get(format_name) if format_name else None
    for path in expand(paths):
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
            yield trace
