"""The training guard on the TRL backend, end to end through `composer-core train` on the embedded model: a run
made to diverge stops with the guard's exit code and its last good state, a rollback recovers, and the healthy
default job trips nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch
from safetensors.torch import load_file

from composer_core.guard import GUARD_EXIT_CODE
from composer_trl.defaults import EMBEDDED_MODEL

# a learning rate of 1.0 wrecks the embedded model in one update (its reward falls from ~0.7 to 0); a constant
# schedule makes a shorter run of the same job take exactly the same steps
DIVERGING = ["run.learning_rate=1.0", "run.trl.lr_scheduler_type=constant", "run.prompts_per_step=4",
             "run.max_completion_length=6", "data.train_size=64", "data.eval_size=8"]


def train(out: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", "train", "--output-dir", str(out), *overrides],
                          capture_output=True, text=True, timeout=timeout, check=False)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def report(out: Path) -> dict:
    return json.loads((out / "guard_report.json").read_text())


def test_a_diverging_run_stops_with_its_last_good_state(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(out, *DIVERGING, "run.max_steps=25")
    assert result.returncode == GUARD_EXIT_CODE, result.stderr[-3000:]
    stop = report(out)["stopped"]
    assert stop is not None and stop["rules"] == ["reward_collapse"]
    good = stop["last_good_step"]
    assert 0 <= good < stop["step"] <= 25
    assert f"stopped by the training guard at step {stop['step']}: reward_collapse" in result.stdout
    assert f"guard: step {stop['step']}: reward_collapse (stop)" in result.stderr
    checkpoint = Path(stop["checkpoint"])
    assert checkpoint == out / "checkpoints" / f"checkpoint-{good}"
    saved = weights(checkpoint)
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())
    # it is the last good step: the same job stopped there by max_steps ends with the same weights
    if good == 0:
        expected = weights(EMBEDDED_MODEL)
    else:
        reference = tmp_path / "reference"
        assert train(reference, *DIVERGING, f"run.max_steps={good}").returncode == 0
        expected = weights(reference / "final")
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[name], expected[name]) for name in saved)
    last_good = weights(out / "last_good")  # the model folder holds the same weights
    assert all(torch.equal(last_good[name], saved[name]) for name in saved)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["guard"]["stopped"] and summary["model"] == str(out / "last_good")
    assert summary["eval_reward_after"] is not None and summary["eval_reward_after"] > 0.3  # the good model's


def test_rollback_restores_the_last_good_state_and_training_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(out, *DIVERGING, "run.max_steps=30", "guard.rules.reward_collapse.action=rollback",
                   "guard.rollback_lr_factor=0.0001")
    assert result.returncode == 0, result.stderr[-3000:]
    guard = report(out)
    assert len(guard["rollbacks"]) == 1 and guard["stopped"] is None
    rollback = guard["rollbacks"][0]
    assert rollback["learning_rate"] == pytest.approx(1e-4)
    assert f"guard: step {rollback['step']}: rolled back to step {rollback['restored_step']}" in result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    after = [row for row in rows if "reward" in row and row["step"] > rollback["step"]]
    assert after and all(row["learning_rate"] == pytest.approx(1e-4) for row in after)
    assert sum(row["reward"] for row in after) / len(after) > 0.3  # it recovered and kept training
    assert json.loads((out / "summary.json").read_text())["steps"] == 30


def test_an_update_that_makes_weights_non_finite_is_taken_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(out, *DIVERGING, "run.learning_rate=1e38", "run.max_steps=5")
    assert result.returncode == GUARD_EXIT_CODE, result.stderr[-3000:]
    guard = report(out)
    assert guard["stopped"]["rules"] == ["non_finite"] and guard["skipped_steps"]
    assert "non-finite" in guard["skipped_steps"][0]["reason"]
    saved = weights(Path(guard["stopped"]["checkpoint"]))
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_reward_after"] == summary["eval_reward_before"]  # the untrained model was the last good


def test_the_healthy_default_job_trips_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(out)
    assert result.returncode == 0, result.stderr[-3000:]
    guard = report(out)
    assert guard["findings"] == [] and guard["skipped_steps"] == [] and guard["rollbacks"] == []
    assert guard["last_good_step"] == guard["steps_observed"] - 1  # every step was judged good
    assert "guard:" not in result.stderr


def test_the_overhead_benchmark_measures_both_arms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # benchmarks/ is beside composer_core/
    from benchmarks import guard_training

    assert guard_training.main(["--quick", "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "guard_training.json").read_text())["result"]
    assert result["median_step_s_off"] > 0 and result["median_step_s_on"] > 0
    assert result["ratio"] == pytest.approx(result["median_step_s_on"] / result["median_step_s_off"])
