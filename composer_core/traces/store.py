"""The JSONL files the trace commands exchange: one pydantic record per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from composer_core.errors import ConfigError
from composer_core.files import check_input

Record = TypeVar("Record", bound=BaseModel)

# A key only one kind of record carries, and the command that writes that kind: to say what a wrong file is.
KINDS = (("pair_id", "preference pairs (from `composer-core traces replay`)"),
         ("target_id", "self-distillation targets (from `composer-core traces targets`)"),
         ("messages", "traces (from `composer-core traces ingest`)"))


def read_records(path: str | Path, kind: type[Record], what: str | None = None) -> Iterator[Record]:
    """Stream records from a JSONL file; a line that is not UTF-8 or does not validate stops with its file and
    line, saying what the line looks like instead (traces where pairs were expected, say)."""
    path = check_input(path, what or f"{kind.__name__} file")
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            line = _decode(raw, path, number)
            if not line.strip():
                continue
            try:
                yield kind.model_validate_json(line)
            except ValidationError as error:
                raise ConfigError(_mismatch(path, number, kind, line, error)) from None


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}:{number} is not UTF-8 text (undecodable byte at column {error.start + 1}); is it "
                          "a binary file? Give the JSONL file a `composer-core traces` command wrote") from None


def _mismatch(path: Path, number: int, kind: type[BaseModel], line: str, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    looks_like = _looks_like(line, kind)
    hint = (f"this line looks like {looks_like}: was the wrong file given?" if looks_like
            else "was it written by the matching `composer-core traces` command?")
    return f"{path}:{number} is not a {kind.__name__} record ({where or 'line'}: {first['msg']}); {hint}"


def _looks_like(line: str, expected: type[BaseModel]) -> str | None:
    """What other kind of composer-core record a JSON line is, by a key only that kind has; None if none fits
    (or the line is the expected kind, merely invalid)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    found = next(((key, name) for key, name in KINDS if key in value), None)
    return None if found is None or found[0] in expected.model_fields else found[1]
