"""The job's prompts and rewards from a ComposerConfig: the built-in task's, or the user's data and functions.

With `data.builtin_task` the built-in arithmetic task gives the train and eval rows and, unless `reward` names
functions, its own reward (with feedback for the self-distillation teacher). Otherwise `data.train` and
`data.eval` are loaded by composer_core.data_sources and `reward` by composer_core.rewards; eval uses the
first `data.eval_size` rows of `data.eval`, and without `data.eval` there is no held-out eval (the summary
says so). A `hint` column reaches the self-distillation teacher; `data.hints: false` drops it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from trl import GRPOConfig

from composer_core.config import ComposerConfig
from composer_core.data_sources import check_prompt_rows, load_prompt_rows
from composer_core.errors import ConfigError
from composer_core.rewards import NamedReward, load_reward_functions, with_columns
from composer_core.tasks import arithmetic
from composer_trl.evaluation import EvalSet

HINT = "hint"


@dataclass(frozen=True)
class JobData:
    """Train rows, eval rows (None: no held-out eval) and the reward functions with their weights."""

    train: Dataset | None
    eval: Dataset | None
    reward_funcs: list[Callable[..., Sequence[Any]]]
    reward_weights: list[float]

    def eval_set(self, max_new_tokens: int) -> EvalSet | None:
        """The eval rows with the job's rewards, generating up to `max_new_tokens`; None without eval rows."""
        if self.eval is None:
            return None
        return EvalSet(self.eval, self.reward_funcs, self.reward_weights, max_new_tokens)


def job_data(config: ComposerConfig) -> JobData:
    """The rows and rewards `composer-core train` (and ComposerGRPOTrainer.from_config) trains with."""
    data = config.data
    if data.builtin_task is not None:
        train = check_prompt_rows(task_dataset(config, data.train_size, "train"), prompt_column="prompt",
                                  reward_columns=data.reward_columns, where=f"the built-in task {data.builtin_task!r}")
        held_out: Dataset | None = task_dataset(config, data.eval_size, "eval")
    elif data.train is not None:
        train = load_prompt_rows(data.train, split=data.train_split, prompt_column=data.prompt_column,
                                 reward_columns=data.reward_columns, setting="data.train")
        held_out = user_eval_rows(config, train)
    else:  # data.targets alone (on-policy): composer_trl.job_targets gives its rows and their lack of reward
        return JobData(None, None, [], [])
    rewards = load_reward_functions(config.reward) if config.reward else [task_reward()]
    train = without_hints(config, train)
    held_out = None if held_out is None else without_hints(config, held_out)
    return JobData(train, held_out, bound_rewards(config, rewards, [train, held_out]),
                   [reward.weight for reward in rewards])


def task_reward() -> NamedReward:
    """The built-in task's own reward, with feedback for the self-distillation teacher."""
    function = arithmetic.reward_function(with_feedback=True)
    return NamedReward(function, 1.0, function.__name__, "the built-in arithmetic task's reward")


def task_dataset(config: ComposerConfig, size: int, split: arithmetic.Split) -> Dataset:
    """Rows of the built-in arithmetic task: a chat prompt, the `answer` its reward reads and the `hint`."""
    rows = [problem.row() for problem in arithmetic.make_problems(size, config.run.seed, split)]
    if not config.data.hints:
        rows = [{key: value for key, value in row.items() if key != HINT} for row in rows]
    return Dataset.from_list(rows)


def user_eval_rows(config: ComposerConfig, train: Dataset) -> Dataset | None:
    """The first data.eval_size rows of data.eval, which must have every column of data.train the reward functions
    read (all but the teacher's hint, or data.reward_columns)."""
    data = config.data
    if data.eval is None:
        return None
    rows = load_prompt_rows(data.eval, split=data.eval_split, prompt_column=data.prompt_column,
                            reward_columns=data.reward_columns, setting="data.eval")
    needed = set(data.reward_columns) if data.reward_columns is not None else set(train.column_names) - {HINT}
    missing = sorted(needed - set(rows.column_names))
    if missing:
        raise ConfigError(f"data.eval {data.eval} lacks the columns {', '.join(missing)} that data.train "
                          f"{data.train} gives the reward functions; add them to the eval data")
    return rows.select(range(min(data.eval_size, len(rows))))


def without_hints(config: ComposerConfig, rows: Dataset) -> Dataset:
    """`rows` without the teacher's `hint` column when data.hints is off (unless a reward function reads it)."""
    reads_hint = config.data.reward_columns is not None and HINT in config.data.reward_columns
    if config.data.hints or HINT not in rows.column_names or reads_hint:
        return rows
    return rows.remove_columns(HINT)


def bound_rewards(config: ComposerConfig, rewards: list[NamedReward],
                  datasets: Sequence[Dataset | None]) -> list[Callable[..., Sequence[Any]]]:
    """The reward functions under their metric names, given only data.reward_columns when that is set."""
    columns = {name for rows in datasets if rows is not None for name in rows.column_names} - {"prompt"}
    wanted = config.data.reward_columns
    unused = set() if wanted is None else columns - set(wanted)
    return [with_columns(reward, unused) for reward in rewards]


def with_reward_weights(grpo_config: GRPOConfig, weights: Sequence[float]) -> GRPOConfig:
    """A copy of `grpo_config` with reward[].weight as TRL's reward_weights (run.trl may not set them)."""
    weighted = copy.copy(grpo_config)
    weighted.reward_weights = list(weights)
    return weighted
