"""Rewards of sampled completions: the recipe's `reward_fn:` component called the way TRL calls reward functions.

A reward function takes `prompts`, `completions` and the data's other columns as keyword arguments and returns
one value per completion: a number, None (not scorable: reward 0 here), or an object with `.reward` and
`.feedback` (composer_core.tasks.arithmetic.RewardResult); the feedback text reaches the self-distillation
teacher. `configured_rewards` turns a ComposerConfig's `reward:` list into one such component.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from composer_core.config import RewardFunctionConfig
from composer_core.errors import ConfigError
from composer_core.rewards import checked_reward, load_reward_functions

RewardFunction = Callable[..., Sequence[Any]]


@dataclass(frozen=True)
class Scored:
    """A completion's reward and the feedback text for the teacher (None: none)."""

    reward: float
    feedback: str | None


def score(reward_fn: RewardFunction, prompts: Sequence[Any], completions: Sequence[str],
          columns: Mapping[str, Sequence[Any]]) -> list[Scored]:
    """Call `reward_fn` once on the batch and check that it gives one finite reward per completion."""
    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    results = list(reward_fn(prompts=list(prompts), completions=list(completions),
                             **{key: list(values) for key, values in columns.items()}))
    if len(results) != len(completions):
        raise ConfigError(f"reward function {name!r} returned {len(results)} rewards for {len(completions)} "
                          "completions; it must return one per completion")
    scored = []
    for index, result in enumerate(results):
        reward = checked_reward(result, name, index)
        feedback = getattr(result, "feedback", None)
        scored.append(Scored(0.0 if reward is None else reward, feedback if isinstance(feedback, str) else None))
    return scored


def configured_rewards(functions: Sequence[Mapping[str, Any]]) -> RewardFunction:
    """One reward function from ComposerConfig `reward:` entries (`function`, `weight`, `name`, `params`): the
    weighted sum of their rewards (None counts 0) with every feedback text joined."""
    loaded = load_reward_functions([RewardFunctionConfig.model_validate(dict(entry)) for entry in functions])
    if not loaded:
        raise ConfigError("reward_fn: configured_rewards needs at least one function")

    def weighted_reward(prompts: list[Any], completions: list[str], **columns: Any) -> list[Scored]:
        totals = [0.0] * len(completions)
        feedback: list[list[str]] = [[] for _ in completions]
        for reward in loaded:
            for index, item in enumerate(score(reward.function, prompts, completions, columns)):
                totals[index] += reward.weight * item.reward
                if item.feedback:
                    feedback[index].append(item.feedback)
        return [Scored(total, "\n".join(texts) or None) for total, texts in zip(totals, feedback, strict=True)]

    return weighted_reward
