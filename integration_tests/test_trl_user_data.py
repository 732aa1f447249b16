"""A user's own run: their data, reward functions and eval, through `composer-core train` and from Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from datasets import Dataset
from trl import GRPOConfig

from composer_core.cli.train import eval_line
from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_trl.defaults import EMBEDDED_MODEL
from composer_trl.job_data import job_data
from composer_trl.model_folder import load_model
from composer_trl.run import run_job
from composer_trl.trainer import ComposerGRPOTrainer
from composer_trl.trl_settings import build_grpo_config

FILE_REWARD = '''
from dataclasses import dataclass

@dataclass
class Scored:
    reward: float
    feedback: str

def score(prompts, completions, target, **kwargs):
    if "unused" in kwargs:
        raise AssertionError("data.reward_columns leaves 'unused' out, yet it was passed")
    return [Scored(0.1, f"The answer is {value}.") for value in target]
'''
MODULE_REWARD = '''
def bonus(completions, target, **kwargs):
    return [value / 10 for value in target]
'''
EVAL_TARGETS = [1, 2, 3, 4]
EVAL_SIZE = 3


def question(a: int, b: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is {a} + {b}?"}]


def write_job(folder: Path, **run: Any) -> Path:
    """Train and eval JSONL, a reward file, a reward module (on PYTHONPATH) and the config naming them."""
    (folder / "train.jsonl").write_text("".join(
        json.dumps({"question": question(10 + i, 20 + i), "target": i % 4, "unused": "x"}) + "\n" for i in range(8)))
    (folder / "eval.jsonl").write_text("".join(
        json.dumps({"question": question(30 + i, 11), "target": target, "unused": "x"}) + "\n"
        for i, target in enumerate(EVAL_TARGETS)))
    (folder / "my_rewards.py").write_text(textwrap.dedent(FILE_REWARD))
    (folder / "user_pkg").mkdir()
    (folder / "user_pkg" / "__init__.py").write_text("")
    (folder / "user_pkg" / "rewards.py").write_text(textwrap.dedent(MODULE_REWARD))
    config = {"data": {"train": "train.jsonl", "eval": "eval.jsonl", "prompt_column": "question",
                       "reward_columns": ["target"], "eval_size": EVAL_SIZE},
              "reward": [{"function": "my_rewards.py:score"},
                         {"function": "user_pkg.rewards:bonus", "weight": 0.5}],
              "distill": {"weight": 0.5, "support": "full"},
              "run": {"prompts_per_step": 2, "max_completion_length": 6, "max_steps": 2, **run}}
    path = folder / "job.json"
    path.write_text(json.dumps(config))
    return path


def expected_eval_reward() -> float:
    """0.1 from `score` plus 0.5 x target / 10 from `bonus`, over the first EVAL_SIZE eval rows."""
    return sum(0.1 + 0.5 * target / 10 for target in EVAL_TARGETS[:EVAL_SIZE]) / EVAL_SIZE


def train_cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "composer_core.cli", "train", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_cli_trains_on_the_users_data_with_their_rewards_and_eval(tmp_path: Path) -> None:
    write_job(tmp_path, eval_steps=1)
    result = train_cli(tmp_path, "--config", "job.json", "--output-dir", "run")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_prompts"] == EVAL_SIZE
    assert summary["eval_reward_before"] == pytest.approx(expected_eval_reward())
    assert summary["eval_reward_after"] == pytest.approx(expected_eval_reward())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "eval/reward" in row] == [1, 2]
    assert all(row["eval/reward"] == pytest.approx(expected_eval_reward()) and "eval/reward_std" in row
               for row in rows if "eval/reward" in row)
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 2
    for row in steps:  # TRL names each reward's metrics after the function; the feedback reached the teacher
        assert row["rewards/score/mean"] == pytest.approx(0.1) and "rewards/bonus/mean" in row
        assert row["composer/teacher/feedback_fraction"] == 1.0
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_a_broken_reward_file_stops_the_job_before_anything_is_made(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_job(tmp_path)
    (tmp_path / "my_rewards.py").write_text("def score(completions):\n    return [\n")
    monkeypatch.chdir(tmp_path)
    config = ComposerConfig.from_file(tmp_path / "job.json")
    with pytest.raises(ConfigError, match=r"reward 'my_rewards.py:score': my_rewards.py line 2: syntax error"):
        run_job(config, output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_from_config_builds_the_trainer_the_cli_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_job(tmp_path, eval_steps=1, max_steps=1, output_dir=str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ComposerConfig.from_file(tmp_path / "job.json")
    # before the trainer: a TrainingArguments made later resets the accelerator state the trainer holds
    cli_args = build_grpo_config(config, str(tmp_path / "out" / "checkpoints")).to_dict()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = ComposerGRPOTrainer.from_config(config)
    assert not [warning for warning in caught if "composer_config sets" in str(warning.message)]
    assert {**cli_args, "reward_weights": [1.0, 0.5]} == trainer.args.to_dict()
    assert trainer.reward_func_names == ["score", "bonus"]
    assert set(trainer.train_dataset.column_names) == {"prompt", "target", "unused"} and len(trainer.train_dataset) == 8
    trainer.train()
    assert trainer.state.global_step == 1
    assert [entry["eval/reward"] for entry in trainer.state.log_history if "eval/reward" in entry] == \
        [pytest.approx(expected_eval_reward())]
    assert ComposerGRPOTrainer.from_config(config, max_steps=3).args.max_steps == 3


def test_a_config_whose_job_sections_go_unused_is_warned_about(tmp_path: Path) -> None:
    model, tokenizer = load_model(EMBEDDED_MODEL)
    rows = Dataset.from_list([{"prompt": question(12, 30)}] * 2)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_steps=1,
                      max_completion_length=4, report_to="none", use_cpu=True)
    job = ComposerConfig.from_mapping({"run": {"max_steps": 7}, "data": {"train_size": 3}})

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [0.0 for _ in completions]

    with pytest.warns(UserWarning, match=r"composer_config sets run, data, which ComposerGRPOTrainer\(...\) does not "
                                         r"use.*ComposerGRPOTrainer.from_config"):
        ComposerGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=rows,
                            processing_class=tokenizer, composer_config=job)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ComposerGRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=rows,
                            processing_class=tokenizer, composer_config=ComposerConfig())
    assert not [warning for warning in caught if "composer_config sets" in str(warning.message)]


def test_without_data_eval_nothing_is_evaluated_and_the_run_says_so(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_job(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ComposerConfig.from_file(tmp_path / "job.json", ["data.eval=null"])
    assert job_data(config).eval_set(8) is None
    assert eval_line({"eval_reward_before": None, "eval_reward_after": None}) == \
        "eval reward: not measured: data.eval is not set (no held-out prompts)"


def test_plain_string_prompts_with_self_distillation_stop_before_any_step(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write_job(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({**row, "question": row["question"][0]["content"]}) + "\n" for row in rows))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ComposerConfig.from_file(tmp_path / "job.json")
    with pytest.raises(ConfigError, match=r"prompts are plain strings \(the first: 'What is 10 \+ 20\?'\).*"
                                          r"distill.weight: 0"):
        run_job(config, output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_chat_prompts_need_a_chat_template_and_plain_prompts_do_not(tmp_path: Path) -> None:
    model, tokenizer = load_model(EMBEDDED_MODEL)
    tokenizer.chat_template = None
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_steps=1,
                      max_completion_length=4, report_to="none", use_cpu=True)

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [0.0 for _ in completions]

    with pytest.raises(ConfigError, match="prompts are chat messages but the tokenizer has no chat template"):
        ComposerGRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list([{"prompt": question(1, 2)}] * 2))
    trainer = ComposerGRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                                  train_dataset=Dataset.from_list([{"prompt": "1 + 2 ="}] * 2))
    trainer.train()
    assert trainer.state.global_step == 1
    with pytest.raises(ConfigError, match="no rows"):
        ComposerGRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                            train_dataset=Dataset.from_list([{"prompt": "x"}]).select([]))
