"""The composer-core command, run as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          check=False, timeout=120)


def test_config_prints_the_resolved_defaults() -> None:
    result = run("config")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"]["objective"]["name"] == "dr_grpo"


def test_config_validates_a_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("distill: {weight: 0.2, alpha: 1.0}\n")
    assert json.loads(run("config", str(good)).stdout)["distill"]["weight"] == 0.2
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: {objective: {name: nope}}\n")
    result = run("config", str(bad))
    assert result.returncode == 2
    assert "unknown objective 'nope'" in result.stderr and "Traceback" not in result.stderr
