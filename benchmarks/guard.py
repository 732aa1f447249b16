"""The training guard's own cost: microseconds per `Guard.observe` along a long, realistic metric stream with every
built-in rule on, at their defaults.

Run `python -m benchmarks.guard [--steps 2000] [--repeats 5] [--quick]`; prints the cost at a few steps and per rule,
and writes benchmarks/results/guard.json. There is no backend to compare with: the number to read is the cost per
step and how it grows with the history (a training step takes seconds; the guard should take microseconds).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.results_file import write_results
from composer_core.guard import GUARD_METRICS, Guard, GuardConfig

RESULTS = Path(__file__).parent / "results"
WINDOW = 21  # steps whose observe times give the median reported at a checkpoint (the checkpoint and the 20 before)
RULE_CALLS = 50  # calls of each rule on the final history for the per-rule cost


def realistic_stream(steps: int, seed: int = 0) -> list[dict[str, float]]:
    """Every canonical metric per step, in the ranges of a real `make demo` run (rewards of 8 groups of 4, a
    slowly falling entropy, a slowly growing KL), healthy throughout: no rule fires on it."""
    generator = random.Random(seed)
    stream = []
    for step in range(steps):
        progress = step / max(1, steps - 1)
        reward = min(1.0, max(0.0, generator.gauss(0.55 + 0.2 * progress, 0.12)))
        stream.append({
            "loss": generator.gauss(0.024, 0.006),
            "grad_norm": generator.lognormvariate(math.log(0.4), 0.45),
            "reward_mean": round(reward * 32) / 32,
            "reward_std": generator.uniform(0.2, 0.45),
            "entropy": max(0.05, 1.2 - 0.6 * progress + generator.gauss(0.0, 0.05)),
            "kl": 0.01 + 0.04 * progress + abs(generator.gauss(0.0, 0.005)),
            "teacher_divergence": abs(generator.gauss(0.048, 0.013)),
            "clip_fraction": generator.uniform(0.0, 0.05),
            "response_length": generator.uniform(8.0, 16.0),
            "truncated_fraction": generator.choice([0.0, 0.0, 0.0, 0.03125, 0.0625]),
            "distill_coverage": generator.uniform(0.6, 1.0),
            "distill_empty": 0.0,
            "zero_std_fraction": generator.choice([0.25, 0.375, 0.5, 0.625, 0.75, 0.875]),
        })
    assert all(set(metrics) == set(GUARD_METRICS) for metrics in stream)
    return stream


def observe_times_us(stream: list[dict[str, float]]) -> tuple[list[float], Guard]:
    """Microseconds of each `observe` along the stream (a fresh guard, every rule on), and the guard."""
    guard = Guard(GuardConfig())
    times = []
    for step, metrics in enumerate(stream, 1):
        start = time.perf_counter()
        decision = guard.observe(step, metrics)
        times.append((time.perf_counter() - start) * 1e6)
        if decision.findings:
            raise AssertionError(f"the benchmark stream is meant to be healthy, but {decision.lines()}")
    return times, guard


def rule_costs_us(guard: Guard) -> dict[str, float]:
    """Median microseconds of one check of each rule on the guard's whole history."""
    costs = {}
    for active in guard.rules:
        samples = []
        for _ in range(RULE_CALLS):
            start = time.perf_counter()
            active.rule.check(guard.history, active.params)
            samples.append((time.perf_counter() - start) * 1e6)
        costs[active.rule.name] = statistics.median(samples)
    return costs


@dataclass(frozen=True)
class GuardResult:
    """Median microseconds per observe at each checkpoint step, per rule at the last step, and in all."""

    steps: int
    repeats: int
    rules: int
    observe_us: dict[int, float]
    rule_us: dict[str, float]
    total_s: float


def measure(steps: int = 2000, repeats: int = 5, checkpoints: tuple[int, ...] = (100, 1000, 2000),
            seed: int = 0) -> GuardResult:
    """Run the stream `repeats` times; at each checkpoint, the median over repeats of the median of its window."""
    stream = realistic_stream(steps, seed)
    points = sorted({point for point in checkpoints if point <= steps} | {steps})
    per_point: dict[int, list[float]] = {point: [] for point in points}
    totals, guard = [], None
    for _ in range(repeats):
        times, guard = observe_times_us(stream)
        totals.append(sum(times) / 1e6)
        for point in points:
            per_point[point].append(statistics.median(times[max(0, point - WINDOW):point]))
    assert guard is not None
    return GuardResult(steps, repeats, len(guard.rules), {point: statistics.median(values)
                                                          for point, values in per_point.items()},
                       rule_costs_us(guard), statistics.median(totals))


def format_result(result: GuardResult) -> str:
    lines = [f"Guard.observe, {result.rules} rules on, median of {result.repeats} run(s) of {result.steps} steps "
             f"(each point: median of the {WINDOW} steps ending there)", "", "| step | us per observe |", "|---|---|"]
    lines += [f"| {point} | {value:.1f} |" for point, value in result.observe_us.items()]
    lines += ["", f"| rule (one check at step {result.steps}) | us |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in sorted(result.rule_us.items(), key=lambda item: -item[1])]
    lines += ["", f"whole stream: {result.total_s:.3f} s of guard time for {result.steps} steps"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guard", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="length of the metric stream")
    parser.add_argument("--repeats", type=int, default=5, help="runs over the whole stream")
    parser.add_argument("--quick", action="store_true", help="200 steps, one run: checks the harness only")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for guard.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps, repeats = (200, 1) if args.quick else (args.steps, args.repeats)
    result = measure(steps, repeats)
    print(format_result(result))
    meta = {"python": platform.python_version(), "platform": platform.platform(), "cpu": platform.processor(),
            "logical_cores": os.cpu_count(), "quick": args.quick}
    path = write_results(args.output, "guard.json", {"meta": meta, "result": asdict(result)})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
