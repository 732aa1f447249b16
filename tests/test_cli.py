"""The composer-core command, run as a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from composer_core.cli.main import main
from composer_core.config import DEFAULT_JOB, ComposerConfig


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          check=False, timeout=120)


def test_config_without_a_file_shows_the_train_job_resolved_and_says_so() -> None:
    result = run("config")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown == ComposerConfig.from_mapping(DEFAULT_JOB).resolved()[0]
    assert shown["policy"]["objective"]["aggregation"] is not None and shown["policy"]["advantage"]["name"]
    assert "the job `composer-core train` runs without --config" in result.stderr
    assert "resolved policy.objective.aggregation" in result.stderr


def test_config_library_defaults_are_the_plain_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--library-defaults"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == ComposerConfig().resolved()[0]
    assert "ComposerConfig()" in captured.err


def test_config_validates_a_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("distill: {weight: 0.2, alpha: 1.0}\n")
    assert json.loads(run("config", str(good)).stdout)["distill"]["weight"] == 0.2
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {objective: {name: nope}}\n")
    result = run("config", str(bad))
    assert result.returncode == 2
    assert "unknown objective 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_config_refuses_a_fifo_with_a_clear_error(tmp_path: Path) -> None:
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)  # with no writer, opening it would block forever: the run's timeout bounds the test
    result = run("config", str(fifo))
    assert result.returncode == 2
    assert f"composer-core: error: config file {fifo} is not a regular file (a FIFO)" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_refuses_a_binary_file_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "job.json"
    binary.write_bytes(bytes(range(256)))
    assert main(["config", str(binary)]) == 2  # any other exception would escape main() as a traceback
    assert f"composer-core: error: config file {binary} is not UTF-8 text" in capsys.readouterr().err


def test_a_reader_that_leaves_early_is_not_a_traceback() -> None:
    """`composer-core plugins | head -1`: output into a pipe whose reader has gone ends the command quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "composer_core.cli", "plugins"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


def test_a_guard_stop_is_the_run_line_and_exit_code_3() -> None:
    from composer_core.cli.train import eval_line, exit_code

    summary = {"eval_reward_before": 0.671875, "eval_reward_after": None, "interrupted": False,
               "guard": {"stopped": True, "report": "run/guard_report.json",
                         "stop": {"step": 12, "message": "reward_collapse: fell", "last_good_step": 1,
                                  "checkpoint": "run/checkpoints/checkpoint-1"}}}
    assert eval_line(summary) == ("stopped by the training guard at step 12: reward_collapse: fell; the last good "
                                  "state (step 1) is run/checkpoints/checkpoint-1, eval reward 0.67 -> not measured "
                                  "(see run/guard_report.json)")
    assert exit_code(summary) == 3
