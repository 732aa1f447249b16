"""`composer-core train` end to end on the embedded model (a few steps), as the user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

from composer_trl.defaults import EMBEDDED_MODEL

QUICK = ["--max-steps", "2"]


def write_config(tmp_path: Path, **sections: object) -> Path:
    base = {"data": {"train_size": 16, "eval_size": 8}, "run": {"prompts_per_step": 2, "max_completion_length": 6}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}  # type: ignore[dict-item]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(base))
    return path


def train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", "train", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_a_short_run_writes_metrics_plot_summary_and_the_eval_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, distill={"weight": 0.5, "support": "full"})
    result = train("--config", str(config), "--output-dir", str(tmp_path / "run"), *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("eval reward: ") and " -> " in last
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and not summary["interrupted"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("composer/distill/loss" in record for record in metrics)
    assert (tmp_path / "run" / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "final" / "config.json").exists()
    assert not (tmp_path / "run" / "run.lock").exists()
    assert not list((tmp_path / "run").glob(".*partial"))  # every file was renamed into place


def test_print_backend_config_maps_onto_grpo_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy={"kl": {"coef": 0.02}}, distill={"weight": 0.5, "temperature": 0.8})
    result = train("--config", str(config), "--print-backend-config")
    assert result.returncode == 0, result.stderr
    mapping = json.loads(result.stdout)
    assert mapping["GRPOConfig"]["beta"] == 0.02 and mapping["GRPOConfig"]["temperature"] == 0.8
    assert mapping["ComposerGRPOTrainer(composer_config=...)"]["distill"]["weight"] == 0.5


def test_unknown_objective_stops_before_any_step(tmp_path: Path) -> None:
    config = write_config(tmp_path, policy={"objective": {"name": "grpoo"}})
    result = train("--config", str(config), "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "unknown objective 'grpoo'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


def start_training(config: Path, run: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "composer_core.cli", "train", "--config", str(config),
                             "--output-dir", str(run), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def metric_rows(run: Path) -> list[dict]:
    """The complete rows of metrics.jsonl (a line still being written is skipped)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def wait_for_step(process: subprocess.Popen[str], run: Path, step: int) -> None:
    """Block until the run has logged `step` (bounded: fails if the run ends or takes minutes)."""
    deadline = time.monotonic() + 240
    while not any(row.get("step", 0) >= step for row in metric_rows(run)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the run did not reach step {step} within 240 s"
        time.sleep(0.2)


def step_rows(run: Path) -> list[int]:
    """The step of every per-step training row (TRL's end-of-training summary rows have no loss)."""
    return [row["step"] for row in metric_rows(run) if "loss" in row]


def stop_with(process: subprocess.Popen[str], number: signal.Signals) -> str:
    os.kill(process.pid, number)
    _, stderr = process.communicate(timeout=240)
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_resumable_checkpoint_and_exits_128_plus_its_number(tmp_path: Path,
                                                                           number: signal.Signals) -> None:
    config, run = write_config(tmp_path, run={"max_steps": 500, "save_steps": 500}), tmp_path / "run"
    process = start_training(config, run)
    wait_for_step(process, run, 1)
    stderr = stop_with(process, number)
    assert process.returncode == 128 + number, stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["signal"] == number.name and summary["eval_reward_after"] is None
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == f"checkpoint-{summary['steps']}"  # saved at the step it stopped, not at save_steps
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "composer_state.pt"} <= {
        path.name for path in checkpoint.iterdir()}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "interrupted")
    assert model.config.vocab_size >= len(AutoTokenizer.from_pretrained(run / "interrupted"))
    assert not (run / "run.lock").exists()


def test_a_folder_holding_a_run_is_refused_and_resume_continues_it(tmp_path: Path) -> None:
    """kill -9 after step 3 with checkpoints every 2 steps: the dead run's lock is reported and taken over, the
    folder is refused without --resume (metrics untouched); --resume continues from the last complete checkpoint
    and drops the metrics rows logged after it, so every step appears exactly once."""
    config, run = write_config(tmp_path, run={"max_steps": 500, "save_steps": 2}), tmp_path / "run"
    process = start_training(config, run)
    wait_for_step(process, run, 3)
    process.kill()
    process.communicate(timeout=60)
    before = (run / "metrics.jsonl").read_bytes()
    refused = train("--config", str(config), "--output-dir", str(run), *QUICK)
    assert refused.returncode == 2 and "holds an unfinished run" in refused.stderr and "--resume" in refused.stderr
    assert f"stale lock {run / 'run.lock'}: process {process.pid}" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (run / "metrics.jsonl").read_bytes() == before
    logged = max(step_rows(run))
    rows_before = metric_rows(run)
    resumed = train("--config", str(config), "--output-dir", str(run), "--resume", "--max-steps", str(logged + 2))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    start = int(Path(summary["resumed_from"]).name.rsplit("-", 1)[1])
    assert summary["steps"] == logged + 2 and start in (2, 4)
    dropped = sum(row["step"] > start for row in rows_before)
    assert f"dropped {dropped} metrics rows logged after it" in resumed.stderr
    assert step_rows(run) == list(range(1, logged + 3))


def test_two_runs_never_share_an_output_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    result = train("--config", str(write_config(tmp_path)), "--output-dir", str(run), *QUICK)
    assert result.returncode == 2 and f"in use by process {os.getpid()}" in result.stderr
    assert sorted(path.name for path in run.iterdir()) == ["run.lock"]  # nothing written, the lock left alone


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_command_line_overrides_are_validated_like_the_config_file(tmp_path: Path, steps: str) -> None:
    result = train("--config", str(write_config(tmp_path)), "--max-steps", steps, "--print-backend-config")
    assert result.returncode == 2, result.stdout[-2000:]
    assert f"with run.max_steps={steps} is invalid: run.max_steps" in result.stderr


def test_an_output_folder_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    result = train("--config", str(write_config(tmp_path)), "--output-dir", str(tmp_path / "file" / "run"), *QUICK)
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr


def test_the_embedded_model_ships_with_the_package() -> None:
    assert (EMBEDDED_MODEL / "config.json").exists() and (EMBEDDED_MODEL / "tokenizer.json").exists()
