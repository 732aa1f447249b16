"""Textual feedback from reward functions, for the self-distillation teacher.

TRL reward functions return one float per completion. A composer reward function may instead return
objects with `.reward` and `.feedback` (for example `RewardResult`): the wrapper hands TRL the floats and
keeps the feedback of the last call, aligned with the completions it scored.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from composer_core.errors import ConfigError
from composer_core.rewards.scoring import checked_reward


class FeedbackRecorder:
    """Wraps reward functions; `feedback` holds, per completion of the current scoring round, the first
    non-empty feedback any reward function gave (None when none did). The trainer calls `reset` before
    each round."""

    def __init__(self) -> None:
        self.feedback: list[str | None] = []

    def wrap(self, reward_funcs: Any) -> Any:
        if reward_funcs is None:
            return None
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        wrapped = [self._wrap_one(func) if callable(func) and not hasattr(func, "forward") else func
                   for func in funcs]
        return wrapped if isinstance(reward_funcs, list) else wrapped[0]

    def reset(self, count: int) -> None:
        self.feedback = [None] * count

    def _wrap_one(self, func: Callable[..., Sequence[Any]]) -> Callable[..., list[float | None]]:
        name = getattr(func, "__name__", type(func).__name__)

        @functools.wraps(func)
        def scored(*args: Any, **kwargs: Any) -> list[float | None]:
            try:
                results = list(func(*args, **kwargs))
            except Exception as error:
                raise ConfigError(f"reward function {name!r} raised {type(error).__name__}: {error}") from error
            if len(self.feedback) != len(results):
                self.reset(len(results))
            rewards = []
            for index, result in enumerate(results):
                reward = checked_reward(result, name, index)
                text = getattr(result, "feedback", None)
                if text and self.feedback[index] is None:
                    self.feedback[index] = text
                rewards.append(reward)
            return rewards

        scored.__name__ = name  # TRL names reward metrics after it
        return scored
