"""The ladder's data: the arithmetic task written as a user's data set, so every arm and seed trains on the same
prompts and is evaluated on the same held-out ones (the built-in task draws its eval prompts from run.seed).

Rows carry the task's `answer` (read by `composer_core.tasks.arithmetic:feedback_reward`) and `hint` (given to
the self-distillation teacher). `number_only` asks for the number alone: a pretrained chat model otherwise
explains its way past a short completion budget and is never right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composer_core.experiment.settings import PromptStyle
from composer_core.files import write_text_atomic
from composer_core.tasks import arithmetic

REWARD = "composer_core.tasks.arithmetic:feedback_reward"
TRAIN_SEED, EVAL_SEED = 0, 1


@dataclass(frozen=True)
class TaskFiles:
    train: Path
    eval: Path

    def config(self) -> dict[str, Any]:
        """The `data` and `reward` sections that train on these files."""
        return {"data": {"train": str(self.train), "eval": str(self.eval)}, "reward": [REWARD]}


def prompt(problem: arithmetic.Problem, style: PromptStyle) -> list[dict[str, str]]:
    """The chat prompt of one problem in the given style."""
    if style == "number_only":
        return [{"role": "user", "content": f"What is {problem.a} + {problem.b}? Reply with only the number."}]
    return problem.messages


def rows(size: int, seed: int, split: arithmetic.Split, style: PromptStyle) -> list[dict[str, Any]]:
    return [{**problem.row(), "prompt": prompt(problem, style)}
            for problem in arithmetic.make_problems(size, seed, split)]


def write_task_files(folder: Path, *, train_size: int, eval_size: int, style: PromptStyle) -> TaskFiles:
    """data/train.jsonl and data/eval.jsonl under `folder` (rewritten identically on a resumed ladder)."""
    files = TaskFiles(folder / "data" / "train.jsonl", folder / "data" / "eval.jsonl")
    files.train.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((files.train, rows(train_size, TRAIN_SEED, "train", style)),
                          (files.eval, rows(eval_size, EVAL_SEED, "eval", style))):
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in content), what="ladder task file")
    return files
