"""Reward functions a config names by reference, and their weighted sum (framework-neutral).

`loading` imports `package.module:function` and `path/to/file.py:function` references with clear errors;
`scoring` calls reward functions as TRL does and sums their weighted rewards, for evaluation on any backend.
"""

from composer_core.rewards.loading import NamedReward, load_function, load_reward_functions, with_columns
from composer_core.rewards.scoring import checked_reward, weighted_rewards

__all__ = ["NamedReward", "checked_reward", "load_function", "load_reward_functions", "weighted_rewards",
           "with_columns"]
