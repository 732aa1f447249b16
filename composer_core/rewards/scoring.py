"""Calling reward functions as TRL does and summing their weighted rewards, outside any trainer (evaluation).

Each function is called with `prompts`, `completions`, the data's columns as keyword arguments and any extra
keyword arguments the caller gives; it returns one value per completion: a number, None ("not scorable", NaN),
or an object with `.reward` (and `.feedback`). The weighted sum ignores NaN, as TRL's `nansum` does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from composer_core.errors import ConfigError


def reward_values(results: Sequence[Any], name: str, expected: int) -> list[float]:
    """The rewards of one function's results (`.reward` or the value itself; None is NaN), checked."""
    if len(results) != expected:
        raise ConfigError(f"reward function {name!r} returned {len(results)} rewards for {expected} completions; it "
                          "must return one per completion")
    values = [checked_reward(result, name, index) for index, result in enumerate(results)]
    return [math.nan if value is None else value for value in values]


def checked_reward(result: Any, name: str, index: int) -> float | None:
    """One completion's reward (`.reward` or the value itself) as a float, None when not scorable; anything but a
    finite real number (numpy scalars and bools count) is a ConfigError naming the function and the completion."""
    reward = getattr(result, "reward", result)
    if reward is None:
        return None
    if not isinstance(reward, numbers.Real) or not math.isfinite(reward):
        raise ConfigError(f"reward function {name!r} returned {reward!r} for completion {index}; rewards must be "
                          "finite numbers (or None for 'not scorable')")
    return float(reward)


def weighted_rewards(functions: Sequence[Any], weights: Sequence[float], *, prompts: Sequence[Any],
                     completions: Sequence[Any], columns: Mapping[str, Sequence[Any]], **extra: Any) -> list[float]:
    """Per completion, the sum over reward functions of weight * reward, skipping NaN (TRL's nansum)."""
    if len(functions) != len(weights):
        raise ConfigError(f"{len(functions)} reward functions but {len(weights)} weights")
    totals = [0.0] * len(completions)
    for function, weight in zip(functions, weights, strict=True):
        name = getattr(function, "__name__", type(function).__name__)
        try:
            results = list(function(prompts=list(prompts), completions=list(completions),
                                    **{key: list(values) for key, values in columns.items()}, **extra))
        except Exception as error:  # the user's reward raised: name it, not a traceback from deep inside
            raise ConfigError(f"reward function {name!r} raised {type(error).__name__}: {error}") from error
        for index, value in enumerate(reward_values(results, name, len(completions))):
            if not math.isnan(value):
                totals[index] += weight * value
    return totals
