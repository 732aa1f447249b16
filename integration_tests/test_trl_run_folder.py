"""The output folder of `composer-core train`: one run per folder, stale locks, trimmed metrics, odd paths."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from composer_core.errors import ConfigError
from composer_trl.run_folder import prepare_output_folder, resume_checkpoint, run_lock, trim_metrics


def dead_pid() -> int:
    """The pid of a process that has already exited (and been reaped)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True, check=True)
    return int(process.stdout)


def write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    lock = folder / "run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    return lock


def test_the_lock_holds_pid_and_host_and_is_removed_afterwards(tmp_path: Path) -> None:
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()} on this host"), run_lock(tmp_path):
            pass
    assert not lock.exists()


def test_a_lock_released_by_an_exception_is_gone(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), run_lock(tmp_path):
        raise KeyboardInterrupt
    assert not (tmp_path / "run.lock").exists()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"process {pid} that held it no longer exists" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ('{"pid": 1, "host": "elsewhere.example"}', "in use by process 1 on host elsewhere.example"),
    ("", "cannot read"), ("not json", "cannot read"), ('{"pid": "1"}', "cannot read"),
])
def test_other_locks_are_refused_and_left_alone(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "run.lock").write_text(content)
    with pytest.raises(ConfigError, match=message), run_lock(tmp_path):
        pass
    assert (tmp_path / "run.lock").read_text() == content


def test_trim_keeps_rows_through_the_checkpoint_and_drops_a_cut_short_last_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": step, "loss": step / 10} for step in (1, 2, 3, 4)]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 5, "lo')
    assert trim_metrics(metrics, 2) == 2
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == rows[:2]
    assert "cut short" in capsys.readouterr().err


def test_trim_refuses_a_broken_line_in_the_middle(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    original = '{"step": 1}\ngarbage\n{"step": 2}\n'
    metrics.write_text(original)
    with pytest.raises(ConfigError, match="line 2 is not a metrics record"):
        trim_metrics(metrics, 1)
    assert metrics.read_text() == original


def test_resume_skips_a_checkpoint_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = {2: ("trainer_state.json", "composer_state.pt"), 4: ("trainer_state.json", "composer_state.pt"),
             6: ("trainer_state.json",), 8: ()}  # 6 and 8: killed while saving
    for step, names in saved.items():
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text("{}")
    assert resume_checkpoint(tmp_path).name == "checkpoint-4"
    assert "skipping" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        resume_checkpoint(tmp_path / "empty")


def test_odd_output_folders_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="the output folder is a file"):
        prepare_output_folder(tmp_path / "file")
    with pytest.raises(ConfigError, match="on the way to it, is a file"):
        prepare_output_folder(tmp_path / "file" / "deeper" / "run")
    model = tmp_path / "model"
    model.mkdir()
    for overlapping in (model, model / "run"):
        with pytest.raises(ConfigError, match="overlaps the input"):
            prepare_output_folder(overlapping, inputs=[model])
    earlier = tmp_path / "runs" / "final"  # a model the run would replace: training from an earlier run's final
    earlier.mkdir(parents=True)
    with pytest.raises(ConfigError, match="overlaps the input"):
        prepare_output_folder(tmp_path / "runs", inputs=[earlier])
    assert prepare_output_folder(tmp_path, inputs=[model]).is_dir()  # beside the model is fine
    assert prepare_output_folder(tmp_path / "new" / "run").is_dir()
