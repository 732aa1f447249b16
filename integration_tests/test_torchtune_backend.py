"""`composer-core train --backend torchtune`, run as a user runs it (a CLI process through the entry point).

`--print-backend-config` prints the recipe YAML the experiment config maps to (the loss section being the loss
component's own mapping); a short training run writes the same files as the other backends, and a guard stop
ends the run with exit code 3 and a report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torchtune")

from composer_core import ComposerConfig
from composer_core.config import DEFAULT_JOB
from composer_torchtune import loss_section

pytestmark = pytest.mark.backend("torchtune")
ROOT = Path(__file__).resolve().parents[1]
SHORT = ["run.max_steps=2", "run.prompts_per_step=2", "run.max_completion_length=6", "data.eval_size=4"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "adapters"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_print_backend_config_is_the_recipe_yaml() -> None:
    loss_only = cli("train", "--backend", "torchtune", "--print-backend-config")
    assert loss_only.returncode == 0, loss_only.stderr
    sections = yaml.safe_load(loss_only.stdout)
    assert sections["loss"] == loss_section(ComposerConfig.from_mapping(DEFAULT_JOB))
    assert set(sections) == {"loss", "advantage", "self_distillation"}  # no run settings: an existing job keeps its own
    full = cli("train", "--backend", "torchtune", "--print-backend-config", "--with-run-settings", "run.max_steps=7")
    assert full.returncode == 0, full.stderr
    recipe = yaml.safe_load(full.stdout)
    assert recipe["num_steps"] == 7 and recipe["loss"] == sections["loss"]
    assert recipe["checkpointer"]["model_type"] == "QWEN2"
    assert recipe["model"]["_component_"] == "torchtune.models.qwen2.qwen2"


def test_unsupported_settings_are_refused_before_a_run() -> None:
    done = cli("train", "--backend", "torchtune", "--print-backend-config", "run.gradient_accumulation_steps=2")
    assert done.returncode != 0
    assert "run.gradient_accumulation_steps" in done.stderr


def test_train_writes_metrics_checkpoint_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = cli("train", "--backend", "torchtune", "--output-dir", str(out), *SHORT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["checkpoint"].endswith("epoch_2")
    assert summary["eval_reward_before"] is not None and summary["eval_reward_after"] is not None
    assert "eval reward:" in done.stdout
    assert (out / "config.json").is_file() and (out / "torchtune.yaml").is_file()
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG" and summary["plot"] == str(out / "metrics.png")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    again = cli("train", "--backend", "torchtune", "--output-dir", str(out), *SHORT)
    assert again.returncode != 0 and "not empty" in again.stderr  # a run folder is never reused


def test_guard_stop_exits_3_with_the_last_good_checkpoint(tmp_path: Path) -> None:
    # vanishing_gradients as a stop rule whose floor every gradient is under: it trips at the first step
    out = tmp_path / "run"
    rule = "guard.rules={vanishing_gradients: {action: stop, grad_floor: 1000000, loss_floor: 0.0, patience: 1}}"
    done = cli("train", "--backend", "torchtune", "--output-dir", str(out), *SHORT, rule)
    assert done.returncode == 3, done.stderr[-3000:]
    report = json.loads((out / "guard_report.json").read_text())
    assert report["stopped"]["rules"] == ["vanishing_gradients"]
    assert Path(report["stopped"]["checkpoint"]).name == "epoch_0"  # no step was judged good: the initial weights
    assert "stopped by the training guard" in done.stdout
