"""Benchmark results written whole or not at all, into a folder made if missing (no backend imported here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from composer_core.files import write_text_atomic


def write_results(folder: Path, name: str, data: dict[str, Any]) -> Path:
    """`data` as indented JSON in `folder/name`, renamed into place once complete."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(folder / name, json.dumps(data, indent=2) + "\n", what="benchmark results")
