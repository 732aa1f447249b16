"""The evidence ladder: A1 GRPO, A2 + self-distillation, A3 + trace-replay DPO (composer-core's own research
channel, not part of Cursor's Composer recipe), A4 all three, over seeds, at equal samples and steps.

Runs go seed by seed (every arm of seed 0, then of seed 1, ...), so a ladder stopped early still compares arms
on the same seeds and a slower machine later in the run does not favour one arm. The output folder holds the
task files, A3's pairs, one folder per run and ladder.json / ladder.png; a ladder started again on the folder
skips what is done (the settings must be the same).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError
from composer_core.experiment.plots import plot_ladder
from composer_core.experiment.replay_pairs import build_pairs
from composer_core.experiment.results import summarise, table
from composer_core.experiment.runs import (
    ARM_TITLES,
    arm_config,
    default_model_folder,
    log_path,
    result_path,
    run_arm,
    run_name,
)
from composer_core.experiment.settings import LadderSettings
from composer_core.experiment.task_files import write_task_files
from composer_core.files import write_text_atomic
from composer_core.models import resolve_model_folder

SETTINGS_FILE, RESULT_FILE, PLOT_FILE = "ladder_settings.json", "ladder.json", "ladder.png"
EXTENSIBLE = ("arms", "seeds")  # settings a ladder folder may be rerun with changed: they only add or leave out runs


def run_ladder(settings: LadderSettings, output_dir: str | os.PathLike[str], *, command: str = "") -> dict[str, Any]:
    """Run (or finish) the ladder in `output_dir`; returns what ladder.json holds."""
    folder = Path(output_dir)
    claim_folder(folder, settings)
    files = write_task_files(folder, train_size=settings.train_size, eval_size=settings.eval_size,
                             style=settings.prompt_style)
    pairs = None
    if settings.needs_pairs:
        print("A3 pairs: replaying the base model's answers with local teachers (composer-core traces replay)",
              file=sys.stderr)
        model = resolve_model_folder(settings.model) if settings.model else default_model_folder(settings.backend)
        pairs = build_pairs(folder, files.train, model, settings)
        print(f"A3 pairs: {pairs['pair_count']} pairs from {pairs['prompts']} prompts, chosen answer right "
              f"{pairs['chosen_correct']:.0%}, rejected right {pairs['rejected_correct']:.0%} "
              f"({pairs['wall_s']:.0f} s)", file=sys.stderr)
    plan = [(arm, seed) for seed in range(settings.seeds) for arm in settings.arms]
    records = []
    for index, (arm, seed) in enumerate(plan, start=1):
        config = arm_config(settings, arm, seed, files.config(), pairs["pairs"] if pairs else None)
        started, done_before = time.perf_counter(), result_path(folder, arm, seed).is_file()
        if not done_before:
            print(f"[{index}/{len(plan)}] {run_name(arm, seed)} {ARM_TITLES[arm]}: training (its progress: "
                  f"{log_path(folder, arm, seed)})", file=sys.stderr)
        record = run_arm(folder, settings, arm, seed, config)
        records.append(record)
        seconds = None if done_before else time.perf_counter() - started
        print(progress_line(index, len(plan), record, seconds), file=sys.stderr)
    result = {"settings": settings.model_dump(mode="json"), "command": command, "software": software(),
              "pairs": pairs, "arms": summarise(settings.arms, records), "runs": records}
    write_text_atomic(folder / RESULT_FILE, json.dumps(result, indent=2), what="ladder results")
    plot_ladder(folder / PLOT_FILE, result["arms"], records, title=ladder_title(settings))
    print(table(result["arms"]), file=sys.stderr)
    return result


def claim_folder(folder: Path, settings: LadderSettings) -> None:
    """Record the settings in a new folder. A folder holding a ladder is resumed, or extended with more seeds or
    arms (each arm-seed is a run of its own); one whose runs were made under other settings is refused."""
    path = folder / SETTINGS_FILE
    wanted = settings.model_dump(mode="json")
    if path.is_file():
        held = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(key for key in wanted.keys() | held.keys()
                         if key not in EXTENSIBLE and held.get(key) != wanted.get(key))
        if changed:
            raise ConfigError(f"{folder} holds a ladder run with other settings ({', '.join(changed)} differ): "
                              "choose another --output-dir, or rerun with the same options to resume it")
        if held != wanted:
            write_text_atomic(path, json.dumps(wanted, indent=2), what="ladder settings")
        return
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty and holds no ladder: choose another --output-dir")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(wanted, indent=2), what="ladder settings")


def progress_line(index: int, total: int, record: dict[str, Any], seconds: float | None) -> str:
    """One run's outcome; `seconds` None for a run a previous ladder finished."""
    name = f"[{index}/{total}] {run_name(record['arm'], record['seed'])} {ARM_TITLES[record['arm']]}"
    if record["status"] == "failed":
        return f"{name}: FAILED (exit {record['exit_code']}), see {record['log']}"
    verdict = " (stopped by the guard: " + ", ".join(record["guard_rules"]) + ")" \
        if record["status"] == "collapsed" else ""
    return (f"{name}: eval reward {record['eval_reward_before']:.3f} -> {record['eval_reward_after']:.3f}{verdict}, "
            f"{record['steps']} steps, " + ("done earlier" if seconds is None else f"{seconds:.0f} s"))


def ladder_title(settings: LadderSettings) -> str:
    model = Path(settings.model).name if settings.model else "the embedded model"
    return f"evidence ladder on {model}: {settings.seeds} seed(s), {settings.backend} backend"


def software() -> dict[str, Any]:
    """Where the numbers come from: versions and the machine."""
    packages = {}
    for name in ("composer-core", "torch", "transformers", "trl"):
        try:
            packages[name] = version(name)
        except Exception:
            packages[name] = None
    return {"packages": packages, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
