"""Prompt rows for the recipe's `dataset:` component: the built-in arithmetic task, or a user's data.

A row is a dict with `prompt` (chat messages) and the columns the reward function reads (and `hint`, which the
self-distillation teacher reads). A prompt given as a plain string becomes one user message, since the recipe
always renders prompts with the model's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from composer_core.data_sources import load_prompt_rows
from composer_core.tasks import arithmetic

Row = dict[str, Any]


def arithmetic_prompts(size: int, seed: int = 0, split: arithmetic.Split = "train", hints: bool = True) -> list[Row]:
    """`size` problems of the built-in two-digit addition task: prompt, `answer` (the reward's column), `hint`."""
    rows = [problem.row() for problem in arithmetic.make_problems(size, seed, split)]
    return rows if hints else [{key: value for key, value in row.items() if key != "hint"} for row in rows]


def prompt_file(source: str, split: str = "train", prompt_column: str = "prompt",
                reward_columns: Sequence[str] | None = None, size: int | None = None) -> list[Row]:
    """The rows of a JSONL/JSON/Parquet/CSV file, a saved `datasets` folder or a hub data set (as
    composer_core.data_sources reads them for every backend); the first `size` rows when given."""
    rows = load_prompt_rows(source, split=split, prompt_column=prompt_column, reward_columns=reward_columns,
                            setting="dataset.source").to_list()
    rows = rows if size is None else rows[:size]
    return [{**row, "prompt": as_messages(row["prompt"])} for row in rows]


def as_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
