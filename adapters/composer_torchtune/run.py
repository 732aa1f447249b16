"""`composer-core train --backend torchtune`: write the recipe YAML into the output folder and run it with
`tune run`, then summarise the run as the other backends do (summary.json beside metrics.jsonl).

The recipe runs in a child process through torchtune's own launcher, exactly as a user runs it: `@config.parse`
reads the command line and exits, and the recipe owns the process's seeds and process group, so running it
inside the CLI process would leak that state; the same command with `--nproc_per_node N` is the multi-process
run. One process here (the ComposerConfig has no process count); the printed YAML runs on N.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

import composer_torchtune
from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.files import write_text_atomic
from composer_core.guard import GUARD_EXIT_CODE, REPORT_FILE
from composer_core.plots import plot_metrics
from composer_core.saved_config import save_run_config
from composer_torchtune.native_config import RECIPE, recipe_config

RECIPE_CONFIG = "torchtune.yaml"
SUMMARY = "summary.json"


def prepared_folder(folder: str) -> Path:
    """The output folder, new or empty: a run folder is never reused (no --resume on this backend yet)."""
    out = Path(folder).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} is not empty: choose a new --output-dir (the torchtune backend "
                          "cannot --resume yet)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def tune_command(config_path: Path) -> list[str]:
    """`tune run <recipe> --config <yaml>` with the tune script of this Python environment."""
    tune = Path(sys.executable).with_name("tune")
    return [str(tune), "run", RECIPE, "--config", str(config_path)]


def run_job(config: ComposerConfig, *, output_dir: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the recipe on `config` in a new output folder and return (and write) the run summary."""
    if resume:
        raise ConfigError("--resume is not supported by the torchtune backend yet: start a new run")
    folder = output_dir or config.run.output_dir
    mapping = recipe_config(config, str(Path(folder).resolve()))  # refused settings stop before the folder is made
    out = prepared_folder(folder)
    save_run_config(config, out)
    config_path = write_text_atomic(out / RECIPE_CONFIG, yaml.safe_dump(mapping, sort_keys=False),
                                    what="torchtune recipe config")
    package_root = Path(composer_torchtune.__file__).resolve().parents[1]  # tune run imports the recipe module
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(package_root),
                                                                       os.environ.get("PYTHONPATH")]))}
    print(f"torchtune: {' '.join(tune_command(config_path))}", file=sys.stderr)
    code = subprocess.run(tune_command(config_path), env=env, check=False).returncode
    if code not in (0, GUARD_EXIT_CODE):
        raise ConfigError(f"the torchtune recipe failed with exit code {code} (its output is above); the config "
                          f"it ran is {config_path}")
    return write_summary(out, config, code)


def write_summary(out: Path, config: ComposerConfig, code: int) -> dict[str, Any]:
    """summary.json from metrics.jsonl, the checkpoints and the guard report."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    evals = [row["eval_reward"] for row in rows if "eval_reward" in row]
    steps = max((row["step"] for row in rows if "loss" in row), default=0)
    saved = sorted((out / "checkpoints").glob("epoch_*"), key=lambda path: int(path.name.split("_")[1]))
    report = out / REPORT_FILE
    guard = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    stopped = code == GUARD_EXIT_CODE
    summary = {"eval_reward_before": evals[0] if evals else None,
               "eval_reward_after": evals[-1] if len(evals) > 1 and not stopped else None,
               "steps": steps, "max_steps": config.run.max_steps, "interrupted": False, "signal": None,
               "model": str(saved[-1]) if saved else None, "checkpoint": str(saved[-1]) if saved else None,
               "metrics": str(out / "metrics.jsonl"), "recipe_config": str(out / RECIPE_CONFIG),
               "plot": str(plot_metrics(out / "metrics.jsonl", out / "metrics.png", before=None, after=None)),
               "guard": {"stopped": stopped, "stop": (guard or {}).get("stopped"), "report": str(report)}
               if guard else None}
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2), what="run summary")
    return summary
