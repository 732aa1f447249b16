"""The JSONL files the trace commands exchange: one pydantic record per line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from composer_core.errors import ConfigError

Record = TypeVar("Record", bound=BaseModel)


def read_records(path: str | Path, kind: type[Record]) -> Iterator[Record]:
    """Stream records from a JSONL file; a line that does not validate stops with its file and line."""
    path = Path(path)
    try:
        stream = path.open(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield kind.model_validate_json(line)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ConfigError(f"{path}:{number} is not a {kind.__name__} record ({where}: {first['msg']}); "
                                  f"was it written by the matching `composer-core traces` command?") from None
