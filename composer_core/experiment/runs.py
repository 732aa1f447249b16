"""One arm-seed of the ladder: its job config, a `composer-core train` child process, and its result record.

Each run is the command a user would type, in a child process (a crash, a guard stop or an out-of-memory kill
ends that run, not the ladder). A finished run leaves results/<arm>-seed<k>.json; a ladder started again skips
it. An interrupted run resumes from its last checkpoint, or starts over when it had none.
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.experiment.settings import Arm, LadderSettings
from composer_core.files import write_text_atomic
from composer_core.guard import GUARD_EXIT_CODE
from composer_core.plugins import registries

ARM_TITLES: dict[Arm, str] = {
    "A1": "GRPO (dr_grpo)",
    "A2": "GRPO + self-distillation",
    "A3": "GRPO + trace-replay DPO",
    "A4": "GRPO + self-distillation + trace-replay DPO",
}
INTERRUPTED = (130, 128 + signal.SIGTERM)
CHILD_STOP_S = 120  # how long a stopped child may take to save its checkpoint
USAGE_ERROR = 2  # composer-core's exit code for a config or command-line mistake


def run_name(arm: Arm, seed: int) -> str:
    return f"{arm}-seed{seed}"


def result_path(folder: Path, arm: Arm, seed: int) -> Path:
    """The record of a finished (or collapsed) run; its presence is what a resumed ladder skips."""
    return folder / "results" / f"{run_name(arm, seed)}.json"


def log_path(folder: Path, arm: Arm, seed: int) -> Path:
    """Where the run's `composer-core train` output goes (its progress bar, its summary, any error)."""
    return folder / "logs" / f"{run_name(arm, seed)}.log"


def arm_config(settings: LadderSettings, arm: Arm, seed: int, data: dict[str, Any], pairs: str | None
               ) -> ComposerConfig:
    """The base job with the arm's channels switched on, the seed, the model and the task files; every arm gets
    the same samples per step and steps."""
    mapping = json.loads(json.dumps(settings.base))  # a deep copy
    mapping.setdefault("run", {})["seed"] = seed
    mapping.update(data)
    if settings.model is not None:
        mapping.setdefault("model", {})["path"] = settings.model
    mapping.setdefault("distill", {})["weight"] = settings.distill_weight if arm in ("A2", "A4") else 0.0
    mapping.setdefault("preference", {})["weight"] = settings.preference_weight if arm in ("A3", "A4") else 0.0
    if arm in ("A3", "A4"):
        mapping["data"]["preference_pairs"] = pairs
    return ComposerConfig.from_mapping(mapping, source=f"ladder arm {arm}", overrides=settings.overrides)


def run_arm(folder: Path, settings: LadderSettings, arm: Arm, seed: int, config: ComposerConfig) -> dict[str, Any]:
    """Train one arm-seed (or resume it) and return its record, which is also written to results/."""
    name = run_name(arm, seed)
    record_path = result_path(folder, arm, seed)
    if record_path.is_file():
        return json.loads(record_path.read_text(encoding="utf-8"))
    config_path = folder / "configs" / f"{name}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config_path, json.dumps(config.model_dump(mode="json"), indent=2), what="arm config")
    out = folder / "runs" / name
    command = [sys.executable, "-m", "composer_core.cli", "train", "--backend", settings.backend,
               "--config", str(config_path), "--output-dir", str(out), *resume_option(out)]
    log = log_path(folder, arm, seed)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("a", encoding="utf-8") as stream:  # a resumed run's log follows the interrupted one's
        code = train_child(command, stream)
    if code in INTERRUPTED:
        raise KeyboardInterrupt(f"{name} was interrupted; run the ladder again to resume it")
    if code == USAGE_ERROR:  # the same for every run: stop the ladder at the first
        raise ConfigError(f"{name}: composer-core train refused the arm's config {config_path}: "
                          f"{last_line(log)}")
    samples = config.run.prompts_per_step * config.run.num_generations
    record = run_record(out, arm, seed, code, time.perf_counter() - started, log, samples)
    if record["status"] != "failed":  # a failed run is listed in ladder.json and tried again on a rerun
        record_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record_path, json.dumps(record, indent=2), what="run record")
    return record


def train_child(command: list[str], log: IO[str]) -> int:
    """Run the child to its end; if the ladder is stopped meanwhile, the child is stopped too (SIGTERM: it saves
    a checkpoint, as composer-core train does) and waited for, never left running alone."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        return child.wait()
    except BaseException:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            child.kill()
        raise


def last_line(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def resume_option(out: Path) -> list[str]:
    """--resume for a run folder with a checkpoint; a folder without one (stopped before its first) is cleared."""
    if any((out / "checkpoints").glob("checkpoint-*")):
        return ["--resume"]
    if out.exists():
        shutil.rmtree(out)  # an unfinished run of this ladder with nothing to resume from
    return []


def run_record(out: Path, arm: Arm, seed: int, code: int, wall_s: float, log: Path, samples_per_step: int
               ) -> dict[str, Any]:
    """What the ladder keeps of a run: eval rewards, guard verdict, cost (TRL's step_time and num_tokens, prompt
    and completion tokens generated) and the per-step curves."""
    record: dict[str, Any] = {"arm": arm, "seed": seed, "exit_code": code, "wall_s": wall_s, "log": str(log),
                              "run": str(out)}
    summary_path = out / "summary.json"
    if code not in (0, GUARD_EXIT_CODE) or not summary_path.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        return {**record, "status": "failed", "error": tail}
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    guard = summary.get("guard") or {}
    stop = guard.get("stop") or {}
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    trained = [row for row in steps if "reward" in row]
    return {**record, "status": "collapsed" if guard.get("stopped") else "finished",
            "guard_rules": stop.get("rules", []), "guard_stop_step": stop.get("step"),
            "eval_reward_before": summary["eval_reward_before"], "eval_reward_after": summary["eval_reward_after"],
            "steps": summary["steps"],
            "train_s": sum(row.get("step_time", 0.0) for row in trained), "step_s": steady_step_time(trained),
            "tokens": max((row.get("num_tokens", 0.0) for row in trained), default=0.0),
            "completion_tokens": samples_per_step * sum(row.get("completions/mean_length", 0.0) for row in trained),
            "curves": {key: [[row["step"], row[key]] for row in trained if key in row] for key in CURVES}}


def steady_step_time(rows: list[dict[str, Any]]) -> float | None:
    """The median seconds per step after the first (which also warms up the kernels and allocator)."""
    times = [row["step_time"] for row in rows if "step_time" in row]
    return statistics.median(times[1:] or times) if times else None


CURVES = ("reward", "step_time", "composer/distill/loss", "composer/preference/loss", "composer/preference/accuracy")


def default_model_folder(backend: str) -> Path:
    """The backend's own default model (the replay teachers' model when no --model is given)."""
    default = registries().backends.get(backend).default_model
    if default is None:
        raise ConfigError(f"A3's replay teachers need a model and the {backend} backend names no default one: give "
                          "--model")
    return default()
