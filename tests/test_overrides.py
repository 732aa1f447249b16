"""Dotted `key=value` overrides: parsed as YAML, merged, then validated exactly as a config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer_core.cli.main import main
from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.errors import ConfigError
from composer_core.overrides import apply_overrides, parse_override


@pytest.mark.parametrize(("item", "path", "value"), [
    ("run.max_steps=5", ["run", "max_steps"], 5),
    ("run.report_to=[tensorboard, wandb]", ["run", "report_to"], ["tensorboard", "wandb"]),
    ("model.path=null", ["model", "path"], None),
    ("data.train=rows.jsonl", ["data", "train"], "rows.jsonl"),
    ("distill.alpha=0.25", ["distill", "alpha"], 0.25),
])
def test_values_are_read_as_yaml(item: str, path: list[str], value: object) -> None:
    assert parse_override(item) == (path, value)


@pytest.mark.parametrize("item", ["run.max_steps", "=5", "run..x=1", "run.max-steps=1", "run.x={a: 1, a: 2}"])
def test_malformed_overrides_are_refused(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_override(item)


def test_overrides_merge_into_a_copy_and_create_sections() -> None:
    original = {"run": {"max_steps": 3}}
    merged = apply_overrides(original, ["run.seed=7", "data.hints=false"])
    assert merged == {"run": {"max_steps": 3, "seed": 7}, "data": {"hints": False}}
    assert original == {"run": {"max_steps": 3}}


def test_a_key_under_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="run.max_steps is a value"):
        apply_overrides({"run": {"max_steps": 3}}, ["run.max_steps.deeper=1"])


@pytest.mark.parametrize(("override", "field"), [
    ("run.max_steps=-5", "run.max_steps"), ("run.max_steps=0", "run.max_steps"),
    ("run.learning_rate=.inf", "run.learning_rate"), ("distill.weight=.nan", "distill.weight"),
    ("run.max_stpes=3", "run.max_stpes"),
])
def test_overrides_get_the_file_s_validation(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=f"with {override} is invalid: {field}"):
        ComposerConfig.from_mapping(DEFAULT_JOB, source="the default train job", overrides=[override])


def test_overrides_on_a_file_win_over_the_file(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("run:\n  max_steps: 3\n  seed: 1\n")
    config = ComposerConfig.from_file(job, ["run.max_steps=9"])
    assert (config.run.max_steps, config.run.seed) == (9, 1)


def test_config_command_takes_a_file_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("run:\n  max_steps: 3\n")
    assert main(["config", str(job), "run.seed=4"]) == 0
    assert '"seed": 4' in capsys.readouterr().out
    assert main(["config", str(job), str(job)]) == 2
    assert "one file" in capsys.readouterr().err
