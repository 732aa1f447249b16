"""The run's saved config.json: it reloads to the same job, and a resume that would train differently is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.errors import ConfigError
from composer_core.saved_config import SAVED_CONFIG, check_resumed_config, save_run_config, saved_form


def job(*overrides: str) -> ComposerConfig:
    return ComposerConfig.from_mapping(DEFAULT_JOB, overrides=overrides)


def test_the_saved_file_loads_back_to_the_same_resolved_config(tmp_path: Path) -> None:
    config = job("run.max_steps=7", "policy.kl.coef=0.02", "run.trl.lr_scheduler_type=cosine")
    path = save_run_config(config, tmp_path)
    reloaded = ComposerConfig.from_file(path)
    assert saved_form(reloaded, tmp_path) == saved_form(config, tmp_path)
    assert reloaded.run.max_steps == 7 and reloaded.run.trl == {"lr_scheduler_type": "cosine"}
    assert reloaded.run.output_dir == str(tmp_path.resolve())  # the folder the run wrote to, not the default


def test_local_paths_are_saved_absolute_and_hub_names_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.jsonl").write_text('{"prompt": "1+1"}\n')
    (tmp_path / "score.py").write_text("def score(**kwargs):\n    return [0.0]\n")
    config = ComposerConfig.from_mapping({"data": {"train": "rows.jsonl"}, "model": {"path": "org/hub-model"},
                                          "reward": ["score.py:score", "my_package.rewards:exact"]})
    (tmp_path / "run").mkdir()
    saved = json.loads(save_run_config(config, tmp_path / "run").read_text())
    assert saved["data"]["train"] == str(tmp_path / "rows.jsonl")
    assert [reward["function"] for reward in saved["reward"]] == [f"{tmp_path / 'score.py'}:score",
                                                                  "my_package.rewards:exact"]
    assert saved["model"]["path"] == "org/hub-model"


def test_resume_accepts_more_steps_and_other_logging(tmp_path: Path) -> None:
    save_run_config(job("run.max_steps=4"), tmp_path)
    assert check_resumed_config(job("run.max_steps=9", "run.logging_steps=5", "run.report_to=[tensorboard]"),
                                tmp_path)


def test_resume_refuses_a_config_that_trains_differently_naming_each_key(tmp_path: Path) -> None:
    save_run_config(job("run.max_steps=4"), tmp_path)
    with pytest.raises(ConfigError) as refused:
        check_resumed_config(job("run.max_steps=9", "run.learning_rate=0.5", "distill.weight=0"), tmp_path)
    message = str(refused.value)
    assert "run.learning_rate: 0.0001 -> 0.5" in message and "distill.weight: 0.5 -> 0.0" in message
    assert "run.max_steps:" not in message and f"--config {tmp_path / SAVED_CONFIG}" in message


def test_resume_of_a_run_without_a_saved_config_has_nothing_to_compare(tmp_path: Path) -> None:
    assert check_resumed_config(job(), tmp_path) is False


def test_an_unreadable_saved_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / SAVED_CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match="saved config cannot be read.*delete it to resume"):
        check_resumed_config(job(), tmp_path)
