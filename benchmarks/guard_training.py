"""The training guard's overhead on a real training step: the default job (`make demo`'s) on the embedded model,
trained with the guard on and off by fresh trainers in alternation, in one process. The ratio is the number to
read (goal: under 1.01); absolute times hold only for this machine.

Run `python -m benchmarks.guard_training [--steps 20] [--repeats 3] [--quick]`; writes
benchmarks/results/guard_training.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from benchmarks.results_file import write_results
from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_trl.console import quiet_loading_bars
from composer_trl.trainer import ComposerGRPOTrainer

RESULTS = Path(__file__).parent / "results"


class StepClock(TrainerCallback):
    """Seconds from the end of one optimizer step to the end of the next (the first step, with its warm-up, is
    left out)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.ends, self.ends[1:], strict=False)]


def step_times(guard: bool, steps: int, folder: str) -> list[float]:
    """The step durations of one fresh run of the default job, with the guard on or off."""
    config = ComposerConfig.from_mapping(DEFAULT_JOB, source="the default job",
                                         overrides=[f"guard.enabled={str(guard).lower()}", f"run.max_steps={steps}"])
    trainer = ComposerGRPOTrainer.from_config(config, output_dir=folder, save_strategy="no", report_to=[],
                                              disable_tqdm=True, logging_steps=steps + 1)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    assert (trainer.guard is not None) == guard
    return clock.durations()


@dataclass(frozen=True)
class OverheadResult:
    steps: int
    repeats: int
    median_step_s_off: float
    median_step_s_on: float
    ratio: float


def measure(steps: int = 20, repeats: int = 3) -> OverheadResult:
    """Median step time over every step of `repeats` runs each, guard off and on alternating."""
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder, quiet_loading_bars():
        for index in range(repeats):
            for guard in (False, True) if index % 2 == 0 else (True, False):
                times[guard] += step_times(guard, steps, os.path.join(folder, f"{index}-{guard}"))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return OverheadResult(steps, repeats, off, on, on / off)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard_training", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 steps, one run each: checks the harness only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    result = measure(steps, repeats)
    print(f"guard off: {result.median_step_s_off * 1e3:.1f} ms per step; on: {result.median_step_s_on * 1e3:.1f} ms; "
          f"ratio {result.ratio:.3f} ({result.repeats} run(s) of {result.steps} steps each)")
    meta = {"python": platform.python_version(), "platform": platform.platform(), "logical_cores": os.cpu_count(),
            "quick": args.quick}
    path = write_results(args.output, "guard_training.json", {"meta": meta, "result": asdict(result)})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
