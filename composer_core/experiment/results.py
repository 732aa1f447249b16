"""The ladder's numbers: per arm, the held-out eval reward after training with a 95% confidence interval over
seeds, its paired difference from A1 (same seed, same prompts), and what each arm cost.

The interval is Student's t over seeds: it counts the spread that training randomness makes, which is what the
comparison is about (every arm is evaluated greedily on the same held-out prompts). A collapsed run (stopped by
the training guard) counts with the eval reward of its last good state and is reported as collapsed; a failed
run has no eval reward and is listed, never dropped silently.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from composer_core.experiment.runs import ARM_TITLES
from composer_core.experiment.settings import Arm

T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(degrees: int) -> float:
    """Student's t 97.5% quantile (two-sided 95%); beyond the table 1.96 + 2.4/df is within 0.002."""
    return T_975[degrees - 1] if degrees <= len(T_975) else 1.96 + 2.4 / degrees


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% t-interval of `values` (no interval from one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"n": len(values), "mean": mean, "ci95": None}
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"n": len(values), "mean": mean, "ci95": [mean - half, mean + half]}


def measured(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for record in records if record.get("eval_reward_after") is not None]


def arm_summary(arm: Arm, records: Sequence[dict[str, Any]], baseline: dict[int, float]) -> dict[str, Any]:
    """One arm's eval reward, difference from A1, statuses and cost."""
    done = measured(records)
    summary: dict[str, Any] = {"title": ARM_TITLES[arm], "runs": len(records),
                               "status": {status: sum(r["status"] == status for r in records)
                                          for status in ("finished", "collapsed", "failed")},
                               "collapsed": [{"seed": r["seed"], "rules": r["guard_rules"],
                                              "step": r["guard_stop_step"]}
                                             for r in records if r["status"] == "collapsed"]}
    if not done:
        return summary
    paired = [r["eval_reward_after"] - baseline[r["seed"]] for r in done if r["seed"] in baseline]
    step_times = [r["step_s"] for r in done if r.get("step_s") is not None]
    return {**summary, "eval_reward_before": interval([r["eval_reward_before"] for r in done]),
            "eval_reward_after": interval([r["eval_reward_after"] for r in done]),
            "minus_A1": interval(paired) if paired and arm != "A1" else None,
            "seconds_per_step": statistics.fmean(step_times) if step_times else None,
            "wall_s_per_run": statistics.fmean(r["wall_s"] for r in done),
            "tokens_per_run": statistics.fmean(r["tokens"] for r in done),
            "completion_tokens_per_run": statistics.fmean(r["completion_tokens"] for r in done)}


def summarise(arms: Sequence[Arm], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every arm's summary, A1's per-seed rewards being the baseline of the paired differences."""
    baseline = {r["seed"]: r["eval_reward_after"] for r in measured(records) if r["arm"] == "A1"}
    by_arm = {arm: [r for r in records if r["arm"] == arm] for arm in arms}
    summaries = {arm: arm_summary(arm, rows, baseline) for arm, rows in by_arm.items()}
    if "A1" in summaries and summaries["A1"].get("seconds_per_step"):
        for summary in summaries.values():
            if summary.get("seconds_per_step"):
                summary["step_time_vs_A1"] = summary["seconds_per_step"] / summaries["A1"]["seconds_per_step"]
    return summaries


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the summaries (also printed at the end of a ladder)."""
    lines = ["| arm | runs | eval before | eval after (95% CI) | minus A1 (95% CI, paired) | collapsed | s/step "
             "| vs A1 |", "|---|---|---|---|---|---|---|---|"]
    for arm, s in summaries.items():
        if "eval_reward_after" not in s:
            lines.append(f"| {arm} {s['title']} | {s['runs']} | - | no finished run | - | "
                         f"{s['status']['collapsed']} | - | - |")
            continue
        lines.append(f"| {arm} {s['title']} | {s['runs']} | {s['eval_reward_before']['mean']:.3f} | "
                     f"{_with_interval(s['eval_reward_after'])} | {_with_interval(s['minus_A1'], signed=True)} | "
                     f"{s['status']['collapsed']} | {_number(s['seconds_per_step'])} | "
                     f"{_number(s.get('step_time_vs_A1'))}x |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _with_interval(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if stat is None:
        return "-"
    number = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    if stat["ci95"] is None:
        return f"{number} (one seed)"
    low, high = stat["ci95"]
    return f"{number} [{low:+.3f}, {high:+.3f}]" if signed else f"{number} [{low:.3f}, {high:.3f}]"
