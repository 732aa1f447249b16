"""`composer-core train` end to end on the embedded model (a few steps), as the user runs it."""

from __future__ import annotations

import json
import os
import signal
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


def test_ctrl_c_leaves_a_usable_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path, run={"max_steps": 500})
    process = subprocess.Popen([sys.executable, "-m", "composer_core.cli", "train", "--config", str(config),
                                "--output-dir", str(tmp_path / "run")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 130, stderr[-3000:]
    checkpoint = tmp_path / "run" / "interrupted"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert model.config.vocab_size >= len(tokenizer)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["interrupted"]


def test_the_embedded_model_ships_with_the_package() -> None:
    assert (EMBEDDED_MODEL / "config.json").exists() and (EMBEDDED_MODEL / "tokenizer.json").exists()
