"""ladder.png: the training reward per arm over steps (mean over seeds, the band its min-max), each run's held-out
eval reward after training with the arm's mean and 95% interval, and the seconds per step of each arm."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from composer_core.files import atomic_output
from composer_core.plots import pyplot, smoothed

COLOURS = {"A1": "tab:grey", "A2": "tab:blue", "A3": "tab:orange", "A4": "tab:green"}


def mean_curve(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every run of the arm logged, with the mean, min and max of `key` over runs at each."""
    by_step: dict[int, list[float]] = {}
    for record in records:
        for step, value in record.get("curves", {}).get(key, []):
            by_step.setdefault(step, []).append(value)
    steps = [step for step in sorted(by_step) if len(by_step[step]) == len(records)]
    return (steps, [statistics.fmean(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def plot_ladder(png: Path, summaries: dict[str, dict[str, Any]], records: Sequence[dict[str, Any]],
                title: str) -> Path:
    """Draw the three panels into `png` (written atomically)."""
    plt = pyplot()
    figure, (curves, evals, cost) = plt.subplots(1, 3, figsize=(16, 4.5))
    for index, (arm, summary) in enumerate(summaries.items()):
        rows = [r for r in records if r["arm"] == arm and r["status"] != "failed"]
        colour = COLOURS.get(arm)
        steps, mean, low, high = mean_curve(rows, "reward")
        if steps:
            curves.plot(steps, smoothed(mean), color=colour, label=f"{arm} {summary['title']}")
            curves.fill_between(steps, smoothed(low), smoothed(high), color=colour, alpha=0.12)
        after = summary.get("eval_reward_after")
        if after is None:
            continue
        points = [r["eval_reward_after"] for r in rows if r.get("eval_reward_after") is not None]
        evals.scatter([index] * len(points), points, color=colour, alpha=0.5, s=18)
        low, high = after["ci95"] or [after["mean"], after["mean"]]
        evals.errorbar([index + 0.15], [after["mean"]], yerr=[[after["mean"] - low], [high - after["mean"]]],
                       fmt="o", color=colour, capsize=4)
        cost.bar(index, summary["seconds_per_step"], color=colour)
    before = [s["eval_reward_before"]["mean"] for s in summaries.values() if "eval_reward_before" in s]
    if before:
        evals.axhline(statistics.fmean(before), color="black", linestyle=":", label="before training")
        evals.legend(loc="best", fontsize=8)
    names = list(summaries)
    for axis in (evals, cost):
        axis.set_xticks(range(len(names)), names)
    curves.set(title="training reward (mean over seeds, band: min-max)", xlabel="step", ylabel="mean reward")
    curves.legend(loc="best", fontsize=8)
    evals.set(title="held-out eval reward after training (95% CI)", ylabel="eval reward")
    cost.set(title="seconds per training step", ylabel="s")
    figure.suptitle(title)
    figure.tight_layout()
    try:
        with atomic_output(png, what="ladder plot", binary=True) as stream:
            figure.savefig(stream, dpi=100, format="png")
    finally:
        plt.close(figure)
    return png
