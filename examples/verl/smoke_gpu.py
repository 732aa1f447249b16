"""A few VeRL GRPO steps on one GPU with a composer loss mode, then with composer self-distillation.

The model is composer-core's embedded tiny Qwen2 (it ships with the package, nothing is downloaded); the
task is composer-core's arithmetic task with hints. Each phase runs `python -m verl.trainer.main_ppo` with
the overrides `composer-core train --backend verl --print-backend-config --with-run-settings` prints (less the
keys the one-GPU layout sets), plus that layout.
Needs a CUDA GPU and VeRL's vLLM rollout (`pip install composer-core[verl] vllm`).

    python examples/verl/smoke_gpu.py --output-dir runs/verl-smoke

Writes summary.json: for each phase, the exit code, the steps VeRL reported and their metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from composer_core import ComposerConfig
from composer_core.tasks.arithmetic import make_problems
from composer_verl.overrides import verl_overrides

HERE = Path(__file__).resolve().parent
STEP_LINE = re.compile(r"step:(\d+) - (.*)")
PHASES = {
    "composer_loss_mode": {"policy": {"objective": {"name": "dr_grpo"}}},
    "self_distillation": {"policy": {"objective": {"name": "dr_grpo"}},
                          "distill": {"weight": 0.5, "top_k": 20, "teacher": "ema"}},
}


def embedded_model() -> Path:
    """composer-core's tiny arithmetic Qwen2 (package data of the trl extra)."""
    from composer_trl.defaults import EMBEDDED_MODEL

    return EMBEDDED_MODEL


def write_data(folder: Path, size: int, split: str, seed: int) -> Path:
    """The arithmetic task in VeRL's dataset layout: chat prompt, rule reward with ground truth, hint."""
    import pandas as pd

    rows = [{"data_source": "composer_arithmetic", "prompt": problem.messages, "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": str(problem.answer)},
             "extra_info": {"index": index, "hint": problem.hint}}
            for index, problem in enumerate(make_problems(size, seed, split))]  # type: ignore[arg-type]
    path = folder / f"{split}.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def one_gpu_overrides(model: Path, train: Path, val: Path, steps: int) -> list[str]:
    """The job around the composer overrides: one GPU, the tiny model, vLLM, console metrics."""
    return [f"data.train_files={train}", f"data.val_files={val}", "data.max_prompt_length=64",
            "data.return_raw_chat=true", f"actor_rollout_ref.model.path={model}",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
            "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
            f"reward.custom_reward_function.path={HERE / 'arithmetic_reward.py'}",
            "trainer.use_v1=true", "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.logger=[console]",
            "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=-1",
            f"trainer.total_training_steps={steps}", "trainer.project_name=composer-smoke"]


def parse_steps(log: str) -> dict[int, dict[str, float]]:
    """VeRL's console logger lines `step:N - name:value - ...` as numbers."""
    steps: dict[int, dict[str, float]] = {}
    for number, rest in STEP_LINE.findall(log):
        metrics = {}
        for item in rest.split(" - "):
            name, _, value = item.rpartition(":")
            try:
                metrics[name.strip()] = float(value)
            except ValueError:
                continue
        steps[int(number)] = metrics
    return steps


def run_phase(name: str, mapping: dict[str, Any], base: list[str], output: Path) -> dict[str, Any]:
    config = ComposerConfig.from_mapping({**mapping, "run": {"prompts_per_step": 8, "num_generations": 4,
                                                             "max_completion_length": 16}})
    owned = {line.split("=", 1)[0] for line in base}  # hydra refuses two values for one key
    overrides = [line for line in verl_overrides(config, run_settings=True) if line.split("=", 1)[0] not in owned]
    command = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides, *base, f"trainer.experiment_name={name}"]
    print(f"[{name}] {' '.join(command)}", flush=True)
    log_path = output / f"{name}.log"
    with log_path.open("w") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as job:
        assert job.stdout is not None
        for line in job.stdout:  # progress as it happens
            log.write(line)
            if STEP_LINE.search(line) or "Error" in line:
                print(f"[{name}] {line.rstrip()[:300]}", flush=True)
        code = job.wait()
    return {"returncode": code, "steps": parse_steps(log_path.read_text()), "log": str(log_path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/verl-smoke"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    train = write_data(args.output_dir, 256, "train", seed=0)
    val = write_data(args.output_dir, 32, "eval", seed=1)
    base = one_gpu_overrides(embedded_model(), train, val, args.steps)
    summary = {name: run_phase(name, PHASES[name], base, args.output_dir) for name in args.phases}
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({name: {"returncode": r["returncode"], "steps": len(r["steps"])} for name, r in summary.items()}))
    return 0 if all(r["returncode"] == 0 for r in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
