"""Values written as hydra's override grammar reads them back unchanged (strings, numbers, lists, mappings)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from composer_core.errors import ConfigError

# a string hydra reads back as that string without quotes (not a number, not one of its words)
PLAIN_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
HYDRA_WORDS = frozenset({"null", "true", "false", "inf", "nan"})
# an absolute or ./ path, or VeRL's pkg://module, that hydra also reads back unquoted (printed paths stay readable)
PLAIN_PATH = re.compile(r"(?:/|\./|pkg://)[A-Za-z0-9_./-]*")


def hydra_quoted(text: str) -> str:
    """`text` as a hydra quoted string that reads back exactly: backslashes before a quote or the closing quote
    are doubled, quotes and interpolations (`${`) escaped; newlines and tabs stay literal (hydra keeps them)."""
    escaped = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\*)\$\{", lambda match: match.group(1) * 2 + "\\${", escaped)
    escaped = re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped)
    return f"'{escaped}'"


def hydra_value(value: Any) -> str:
    """A value as hydra's override grammar reads it back unchanged; a list or tuple as a hydra list, a mapping as a
    hydra dict (plain-name keys; others are refused rather than printed as something hydra cannot parse)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = PLAIN_STRING.fullmatch(value) and value.lower() not in HYDRA_WORDS
        return value if plain or PLAIN_PATH.fullmatch(value) else hydra_quoted(value)
    if isinstance(value, Mapping):
        bad = [key for key in value if not (isinstance(key, str) and PLAIN_STRING.fullmatch(key))]
        if bad:
            raise ConfigError(f"keys {bad} cannot be written as hydra mapping keys; use plain names (letters, digits, "
                              "_ . -)")
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    return str(value)
