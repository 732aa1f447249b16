"""`data.targets` in the main job: what the data side and ComposerGRPOTrainer each take from the targets file.

`job_targets(config, tokenizer, model)` reads and tokenises the targets once (composer_trl.targets_data); the job
appends the on-policy target rows to its RL data set (`train_dataset`), completes its reward functions
(`reward_funcs`: target rows alone need none) and hands the object to the trainer (`targets=`), which takes the
on-policy row handling (`on_policy`) or builds the off-policy cycle (`off_policy`). `summary()` goes into the run
summary: every target used or skipped with its reason, and what the steps trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_trl.off_policy_distill import OffPolicyTargets
from composer_trl.target_rows import OnPolicyTargets, with_target_rows
from composer_trl.targets_data import TargetsReport, TokenizedTarget, read_targets


def no_verifiable_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> NoReturn:
    """The reward function of a run on targets alone. Target rows never reach it (their reward wrapper answers None,
    TRL's 'not scorable', for them), so a call means rows that are not targets: refused."""
    raise ConfigError(f"{len(prompts)} rows that are not data.targets rows reached a run without reward functions: "
                      "give `reward: [package.module:function]`")


@dataclass
class JobTargets:
    """The tokenised targets of a job, their report, and the on-policy row handling (None off-policy)."""

    targets: list[TokenizedTarget]
    report: TargetsReport
    on_policy: OnPolicyTargets | None

    def joined(self, dataset: Dataset | None, reward_funcs: list[Any], reward_weights: list[float]
               ) -> tuple[Dataset | None, list[Any], list[float]]:
        """The job's RL data set with the on-policy target rows appended (the target rows alone without one), and
        its reward functions and weights (`no_verifiable_reward` when there are none: on-policy targets alone)."""
        if self.on_policy is not None:
            dataset = with_target_rows(dataset, self.targets)
        if not reward_funcs:
            return dataset, [no_verifiable_reward], [1.0]
        return dataset, reward_funcs, reward_weights

    def off_policy(self, *, batch_size: int, pad: int, seed: int) -> OffPolicyTargets | None:
        """The off-policy cycle (None on-policy)."""
        if self.on_policy is not None:
            return None
        return OffPolicyTargets(self.targets, self.report, batch_size=batch_size, pad=pad, seed=seed)

    def summary(self) -> dict[str, Any]:
        return self.report.summary()


def job_targets(config: ComposerConfig, tokenizer: PreTrainedTokenizerBase, model: Any) -> JobTargets | None:
    """The job's targets (None without data.targets), fitted to the model's positions."""
    if config.data.targets is None:
        return None
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    targets, report = read_targets(config, tokenizer, positions)
    on_policy = OnPolicyTargets(targets, report) if config.data.targets_mode == "on_policy" else None
    return JobTargets(targets, report, on_policy)
