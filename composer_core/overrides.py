"""Dotted `section.key=value` overrides on the command line, validated exactly as the config file is.

Values are read as YAML (`run.max_steps=5` is an int, `run.report_to=[tensorboard]` a list, `model.path=null`
None), through the same strict reader as config files; the merged mapping is then validated as a whole by
`ComposerConfig.from_mapping`, so an override can never skip a check the file would get.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from composer_core.documents import parse_document
from composer_core.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` as (["a", "b", "c"], value)."""
    key, separator, text = item.partition("=")
    path = key.strip().split(".")
    if not separator or not all(part.isidentifier() for part in path):
        raise ConfigError(f"override {item!r} is not `section.key=value` (for example run.max_steps=10)")
    return path, parse_document(text, json_format=False, source=f"the value of override {item!r}")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each override set, creating missing sections; a key under a non-section is refused."""
    merged = copy.deepcopy(dict(data))
    for item in overrides:
        path, value = parse_override(item)
        section = merged
        for depth, part in enumerate(path[:-1]):
            child = section.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[:depth + 1])
                raise ConfigError(f"override {item!r}: {where} is a value ({child!r}), not a section with keys")
            section = child
        section[path[-1]] = value
    return merged
