"""A broken model folder (model.path) is a ConfigError naming the folder and the problem, never a raw
transformers traceback or a silently empty tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("trl")

from composer_core.errors import ConfigError
from composer_trl.defaults import EMBEDDED_MODEL
from composer_trl.model_folder import check_model_folder, load_model


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


BREAKAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "invalid JSON": (lambda folder: (folder / "config.json").write_text("{not json"), "is not valid JSON"),
    "duplicate key": (lambda folder: (folder / "config.json").write_text('{"model_type": "a", "model_type": "b"}'),
                      "duplicate"),
    "unknown model_type": (lambda folder: edit_config(folder, model_type="nosuchmodel"),
                           "model_type 'nosuchmodel' is not known"),
    "no model_type": (lambda folder: (folder / "config.json").write_text("[1, 2]"), "has no model_type"),
    "no config": (lambda folder: (folder / "config.json").unlink(), "has no config.json"),
    "no weights": (lambda folder: (folder / "model.safetensors").unlink(), "has no weights"),
    "no tokenizer": (lambda folder: (folder / "tokenizer.json").unlink(), "has no tokenizer"),
    "a file": (lambda folder: (shutil.rmtree(folder), folder.write_text("x")), "is not a folder"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_model_folder_is_named_before_anything_loads(tmp_path: Path, breakage: str) -> None:
    folder = shutil.copytree(EMBEDDED_MODEL, tmp_path / "model")
    breaker, message = BREAKAGES[breakage]
    breaker(folder)
    with pytest.raises(ConfigError, match=message) as caught:
        check_model_folder(folder)
    assert str(folder) in str(caught.value)


def test_corrupt_weights_are_a_clear_error(tmp_path: Path) -> None:
    folder = shutil.copytree(EMBEDDED_MODEL, tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"garbage, not a safetensors file")
    with pytest.raises(ConfigError, match=f"cannot load the model in {folder}"):
        load_model(check_model_folder(folder))


def test_the_cli_reports_a_bogus_model_without_a_traceback(tmp_path: Path) -> None:
    folder = shutil.copytree(EMBEDDED_MODEL, tmp_path / "model")
    edit_config(folder, model_type="nosuchmodel")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": {"path": str(folder)}}))
    result = subprocess.run([sys.executable, "-m", "composer_core.cli", "train", "--config", str(job),
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "composer-core: error:" in result.stderr and "nosuchmodel" in result.stderr
    assert not (tmp_path / "run").exists()
