"""Non-finite numbers nested in free-form settings (objective params, teacher params, context templates)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def non_finite_values(value: Any, where: str = "") -> list[tuple[str, float]]:
    """(dotted path, value) of every NaN or infinite float nested in `value`, walking mappings and lists
    (`weights.1.inner` is key `weights`, item 1, key `inner`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(where or "value", value)]
    if isinstance(value, Mapping):
        children: Any = value.items()
    else:
        children = enumerate(value) if isinstance(value, list | tuple) else ()
    return [found for key, child in children
            for found in non_finite_values(child, f"{where}.{key}" if where else str(key))]
