"""Persistent cache of teacher replies for trace replay (channel 3 data; channel 3 is composer-core's own
research channel, NOT part of Cursor's Composer recipe).

A reply is stored as soon as its call completes, keyed by a stable hash of (teacher name, model, params,
prompt messages), so a rerun never pays twice for the same call and an interrupted replay resumes where it
stopped. It is one sqlite3 file in WAL mode, committed after every reply: a crash loses at most the calls
in flight. One connection guarded by a lock serves every thread and task of the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from composer_core.errors import ComposerError, ConfigError
from composer_core.files import check_input
from composer_core.replay.teachers import TeacherReply

SQLITE_TIMEOUT_S = 30.0  # how long to wait for another process that holds the cache's write lock
SCHEMA = """CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY, teacher TEXT NOT NULL, reply TEXT NOT NULL, created_at REAL NOT NULL)"""


def cache_key(fingerprint: Mapping[str, Any], messages: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the teacher's fingerprint and the prompt (key order never matters)."""
    canonical = json.dumps({"teacher": fingerprint, "messages": messages}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_cache_path(path: Path) -> None:
    """Refuse a cache path that is a folder, a FIFO or a device (sqlite would fail with a bare message or, on a
    FIFO, block); create a missing folder for it, or say why it cannot be."""
    if path.exists() or path.is_symlink():
        check_input(path, "replay cache")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create replay cache {path}: {error.strerror} ({error.filename})") from None


class ReplayCache:
    """Teacher replies by cache key, in a sqlite3 file (":memory:" for a cache that dies with the process)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            _check_cache_path(Path(self.path))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=SQLITE_TIMEOUT_S)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise ConfigError(f"replay cache {self.path} is not a usable sqlite cache ({error}); give a new --cache "
                              "path, or delete the file to start afresh") from None

    def get(self, key: str) -> TeacherReply | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return TeacherReply.model_validate_json(row[0])
        except ValidationError as error:
            raise ComposerError(f"replay cache {self.path}: entry {key} does not match the TeacherReply contract "
                                f"(written by another version?); delete the file to start afresh: {error}") from error

    def put(self, key: str, teacher: str, reply: TeacherReply) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                             (key, teacher, reply.model_dump_json(), time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReplayCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
