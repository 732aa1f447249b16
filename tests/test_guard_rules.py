"""The built-in guard rules driven by synthetic metric streams: each fires when it should (at the right step, with
the streak's first step and a message naming the metric and threshold), stays quiet on near misses and on a real
healthy run's stream, and moves when its thresholds are configured."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from composer_core.guard import BUILTIN_RULES, GUARD_METRICS, Guard, GuardConfig, GuardRule, MetricHistory, Verdict
from composer_core.guard.rules import smoothed
from composer_core.plugins import registries

Stream = list[dict[str, float]]
HEALTHY_FILE = Path(__file__).parent / "data" / "guard" / "healthy_trl_demo.jsonl"
STOP_ACTIONS = ("stop", "rollback")

# A real `make demo` run (TRL backend, embedded model, 40 steps), canonical metric names.
DEMO: dict[str, list[float]] = {
    "grad_norm": [0.573, 0.314, 0.503, 0.499, 0.659, 0.539, 0.557, 0.338, 0.274, 0.606, 0.798, 0.512, 0.675, 0.326,
                  0.111, 0.219, 1.034, 0.346, 0.776, 0.323, 0.271, 0.663, 0.336, 0.449, 0.719, 0.222, 0.163, 0.251,
                  0.146, 0.204, 0.342, 0.422, 0.223, 0.222, 0.341, 0.597, 0.153, 0.72, 0.388, 0.444],
    "loss": [0.029, 0.021, 0.025, 0.021, 0.031, 0.031, 0.016, 0.017, 0.038, 0.018, 0.022, 0.027, 0.018, 0.03, 0.025,
             0.022, 0.02, 0.01, 0.023, 0.031, 0.03, 0.025, 0.029, 0.023, 0.027, 0.03, 0.016, 0.018, 0.028, 0.016,
             0.017, 0.037, 0.021, 0.016, 0.034, 0.022, 0.025, 0.013, 0.017, 0.013],
    "reward_mean": [0.75, 0.688, 0.531, 0.406, 0.469, 0.594, 0.75, 0.812, 0.438, 0.781, 0.719, 0.562, 0.719, 0.781,
                    0.625, 0.719, 0.75, 0.906, 0.469, 0.688, 0.594, 0.562, 0.562, 0.688, 0.938, 0.719, 0.812, 0.812,
                    0.781, 0.656, 0.875, 0.625, 0.781, 0.781, 0.562, 0.688, 0.781, 0.75, 0.75, 0.75],
    "distill_coverage": [1.0] * 40,
    "truncated_fraction": [0.0] * 40,
    "zero_std_fraction": [0.375, 0.75, 0.375, 0.625, 0.375, 0.375, 0.375, 0.375, 0.5, 0.75, 0.5, 0.625, 0.875, 0.75,
                          0.75, 0.5, 0.375, 0.75, 0.5, 0.625, 0.625, 0.5, 0.625, 0.75, 0.75, 0.875, 0.625, 0.5, 0.625,
                          0.375, 0.5, 0.75, 0.75, 0.625, 0.5, 0.5, 0.625, 0.375, 0.25, 0.625],
    "teacher_divergence": [0.058, 0.041, 0.053, 0.041, 0.061, 0.062, 0.032, 0.034, 0.077, 0.037, 0.043, 0.054, 0.036,
                           0.059, 0.049, 0.044, 0.039, 0.019, 0.047, 0.062, 0.061, 0.05, 0.059, 0.045, 0.054, 0.061,
                           0.032, 0.035, 0.056, 0.032, 0.034, 0.073, 0.042, 0.032, 0.068, 0.044, 0.05, 0.026, 0.034,
                           0.026],
}


def demo_stream() -> Stream:
    """The demo run's metrics, one mapping per step (steps 1..40)."""
    return [{name: values[index] for name, values in DEMO.items()} for index in range(40)]


def load_jsonl_stream(path: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, canonical metrics) per line: `{"step": 3, "loss": ...}` or `{"step": 3, "metrics": {...}}`."""
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        metrics = record.get("metrics", record)
        steps.append((int(record.get("step", number)),
                      {name: float(value) for name, value in metrics.items() if name in GUARD_METRICS}))
    return steps


def rule(name: str) -> GuardRule:
    """The rule as the plugin hook registered it."""
    return registries().guard_rules.get(name)


def verdicts(name: str, stream: Iterable[Mapping[str, float]], **params: float) -> dict[int, Verdict | None]:
    """Step (from 1) to the rule's verdict after that step, with its defaults overridden by `params`."""
    checked = rule(name)
    merged = {**checked.defaults, **params}
    history, seen = MetricHistory(), {}
    for step, metrics in enumerate(stream, 1):
        history.append(step, metrics)
        seen[step] = checked.check(history, merged)
    return seen


def tripped(seen: dict[int, Verdict | None]) -> list[int]:
    return [step for step, verdict in seen.items() if verdict is not None and verdict.tripped]


def first_trip(seen: dict[int, Verdict | None]) -> tuple[int, Verdict]:
    step = tripped(seen)[0]
    verdict = seen[step]
    assert verdict is not None
    return step, verdict


def quiet(seen: dict[int, Verdict | None]) -> bool:
    """No verdict at all: not even a suspicion."""
    return all(verdict is None for verdict in seen.values())


def series(name: str, values: Iterable[float], **constant: float) -> Stream:
    """One metric's values as a stream, with other metrics held constant."""
    return [{name: value, **constant} for value in values]


def test_every_builtin_rule_is_registered_through_the_hook_with_documented_parameters() -> None:
    registry = registries().guard_rules
    assert registry.names() == sorted(rule.name for rule in BUILTIN_RULES)
    assert {entry.plugin for entry in registry} == {"composer_core.guard.rules"}
    for entry in registry:
        assert set(entry.item.metrics) <= set(GUARD_METRICS), entry.name
        assert all(entry.item.parameters[name] for name in entry.item.defaults)


# --- non_finite -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "value", "shown"), [("loss", math.nan, "loss = nan"),
                                                        ("grad_norm", math.inf, "grad_norm = inf"),
                                                        ("loss", -math.inf, "loss = -inf")])
def test_non_finite_fires_at_the_step_and_only_there(metric: str, value: float, shown: str) -> None:
    stream = demo_stream()[:10]
    stream[6] = {**stream[6], metric: value}
    seen = verdicts("non_finite", stream)
    assert tripped(seen) == [7]
    verdict = seen[7]
    assert verdict is not None and verdict.since_step == 7 and shown in verdict.message
    assert math.isnan(verdict.values[metric]) if math.isnan(value) else verdict.values[metric] == value
    assert all(seen[step] is None for step in seen if step != 7)  # no suspicion before, nothing left after


def test_non_finite_ignores_other_metrics_and_absent_ones() -> None:
    stream = [{"reward_mean": math.nan, "kl": math.inf, "entropy": math.nan}, {}, {"loss": 0.1}]
    assert quiet(verdicts("non_finite", stream))


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
healthy_step = st.fixed_dictionaries({"loss": finite, "grad_norm": st.floats(0.0, 1e4),
                                      "reward_mean": st.floats(0.0, 1.0), "entropy": st.floats(0.0, 10.0)})


@settings(max_examples=40, deadline=None)
@given(stream=st.lists(healthy_step, min_size=1, max_size=30))
def test_property_non_finite_never_fires_on_finite_values(stream: Stream) -> None:
    assert quiet(verdicts("non_finite", stream))


@settings(max_examples=40, deadline=None)
@given(stream=st.lists(healthy_step, min_size=1, max_size=30), data=st.data())
def test_property_non_finite_fires_exactly_at_the_nan_loss(stream: Stream, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(stream)), label="k")
    stream[k - 1] = {**stream[k - 1], "loss": math.nan}
    seen = verdicts("non_finite", stream)
    assert tripped(seen) == [k]
    assert seen[k] is not None and seen[k].since_step == k


# --- grad_norm_spike (factor 10, window 20, min_steps 5) -----------------------------------------------------------

def test_grad_norm_spike_fires_above_factor_times_the_median() -> None:
    seen = verdicts("grad_norm_spike", series("grad_norm", [1.0, 0.5, 1.5, 1.0, 0.5, 1.5, 1.0, 10.5]))
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (8, 8)
    assert tripped(seen) == [8]
    assert "grad_norm 10.5" in verdict.message and "median 1 " in verdict.message and "limit 10x" in verdict.message
    assert verdict.values == {"grad_norm": 10.5, "median": 1.0}


def test_grad_norm_spike_near_misses_stay_quiet() -> None:
    assert quiet(verdicts("grad_norm_spike", series("grad_norm", [1.0] * 7 + [10.0])))  # exactly factor x median
    assert quiet(verdicts("grad_norm_spike", series("grad_norm", [1.0] * 4 + [100.0])))  # 4 earlier < min_steps 5
    assert tripped(verdicts("grad_norm_spike", series("grad_norm", [1.0] * 5 + [100.0]))) == [6]  # 5 earlier: fires
    assert quiet(verdicts("grad_norm_spike", series("loss", [1.0] * 7 + [100.0])))  # grad_norm absent


def test_grad_norm_spike_takes_the_median_over_the_window_and_skips_non_finite_values() -> None:
    old_large = [5.0] * 30 + [0.1] * 20  # with window 20 the median is 0.1: a 2.0 is a spike; with 50 it is not
    assert tripped(verdicts("grad_norm_spike", series("grad_norm", [*old_large, 2.0]))) == [51]
    assert quiet(verdicts("grad_norm_spike", series("grad_norm", [*old_large, 2.0]), window=50))
    with_nan = [1.0, math.nan, 1.0, math.inf, 1.0, 1.0, 1.0, 20.0]  # 5 finite earlier values, median 1
    assert tripped(verdicts("grad_norm_spike", series("grad_norm", with_nan))) == [8]


def test_grad_norm_spike_with_zero_counts_does_not_crash() -> None:
    """min_steps 0 and window 0 used to reach statistics.median([]) on the first step."""
    seen = verdicts("grad_norm_spike", series("grad_norm", [1.0, 1.0, 50.0]), min_steps=0, window=0)
    assert tripped(seen) == [3]


# --- vanishing_gradients (grad_floor 1e-6, loss_floor 1e-4, patience 3) --------------------------------------------

def test_vanishing_gradients_suspects_then_fires_after_patience() -> None:
    stream = [{"grad_norm": 0.5, "loss": 0.3}] * 5 + [{"grad_norm": 1e-8, "loss": 0.3}] * 3
    seen = verdicts("vanishing_gradients", stream)
    assert all(seen[step] is None for step in range(1, 6))
    for step in (6, 7):  # a streak shorter than patience: a suspicion
        verdict = seen[step]
        assert verdict is not None and not verdict.tripped and verdict.since_step == 6
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (8, 6)
    assert "grad_norm below 1e-06" in verdict.message and "|loss| > 0.0001" in verdict.message
    assert "for 3 step(s)" in verdict.message


@pytest.mark.parametrize("tail", [
    [{"grad_norm": 1e-8, "loss": 0.3}] * 2 + [{"grad_norm": 0.5, "loss": 0.3}],  # one short of patience, recovers
    [{"grad_norm": 1e-6, "loss": 0.3}] * 5,  # exactly at the gradient floor
    [{"grad_norm": 1e-8, "loss": 1e-4}] * 5,  # |loss| exactly at the loss floor
    [{"grad_norm": 1e-8, "loss": 1e-7}] * 5,  # converged: no loss left to move the weights
    [{"grad_norm": 1e-8}] * 5,  # loss absent
    [{"loss": 0.3}] * 5,  # grad_norm absent
], ids=["patience-1", "at-grad-floor", "at-loss-floor", "converged", "no-loss", "no-grad-norm"])
def test_vanishing_gradients_near_misses_do_not_fire(tail: Stream) -> None:
    seen = verdicts("vanishing_gradients", [{"grad_norm": 0.5, "loss": 0.3}] * 3 + tail)
    assert not tripped(seen)
    assert seen[len(seen)] is None


def test_vanishing_gradients_counts_negative_loss_by_its_magnitude() -> None:
    assert tripped(verdicts("vanishing_gradients", [{"grad_norm": 0.0, "loss": -0.3}] * 3)) == [3]


# --- reward_collapse (fraction 0.5, min_drop 0.15, noise_z 3, patience 10, smooth 5, min_peak 0.05) ---------------

COLLAPSE = series("reward_mean", [0.8] * 10 + [0.1] * 15)


def test_reward_collapse_fires_after_patience_steps_below_half_the_peak() -> None:
    # the first step at 0.1 is already a suspicion (the last good state stays before the fall); the 5-step mean
    # then stays below half the best level (0.8 less its noise margin) from step 13: 10 steps later it fires
    seen = verdicts("reward_collapse", COLLAPSE)
    assert all(seen[step] is None for step in range(1, 11))
    assert all(seen[step] is not None and not seen[step].tripped for step in range(11, 22))
    assert seen[11].since_step == 11 and "fell below 0.5 x its best level" in seen[11].message
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (22, 11)
    assert "reward_mean (mean of 5 steps) 0.1 below 0.5 x its best level 0.8" in verdict.message
    assert verdict.values["smoothed"] == pytest.approx(0.1)
    assert verdict.values["peak"] == pytest.approx(0.8)  # the one 0.7 fall is left out of the noise: none left


def test_reward_collapse_near_misses_stay_quiet() -> None:
    one_short = verdicts("reward_collapse", series("reward_mean", [1.0] * 10 + [0.0] * 9 + [1.0] * 6))
    assert not tripped(one_short)  # the 5-step mean is below 0.5 at steps 13..21: 9 steps, one short of patience
    assert one_short[21] is not None and "for 9 step(s)" in one_short[21].message and one_short[22] is None
    assert quiet(verdicts("reward_collapse", series("reward_mean", [1.0] * 10 + [0.5] * 30)))  # exactly half
    assert quiet(verdicts("reward_collapse", series("reward_mean", [0.04] * 10 + [0.0] * 30)))  # peak < min_peak
    assert quiet(verdicts("reward_collapse", series("loss", [0.8] * 10 + [0.1] * 30)))  # reward absent


def test_reward_collapse_is_quiet_on_noisy_healthy_runs() -> None:
    """The margins scale with the run's own noise: 500 steps of a steady pass rate, scored on 8 or 32 completions
    per step, never stop (lucky steps and windows do not set the bar)."""
    generator = random.Random(3)
    for completions, rate in ((8, 0.1), (8, 0.5), (32, 0.05), (32, 0.3)):
        rewards = [sum(generator.random() < rate for _ in range(completions)) / completions for _ in range(500)]
        assert not tripped(verdicts("reward_collapse", series("reward_mean", rewards))), (completions, rate)


def test_reward_collapse_fires_on_a_fall_in_the_first_steps() -> None:
    """A collapse right after the first update (before a full window exists) still fires, and its streak begins
    at the first bad step, so the kept good state is the first one."""
    step, verdict = first_trip(verdicts("reward_collapse", series("reward_mean", [0.75] + [0.0] * 14)))
    assert (step, verdict.since_step) == (12, 2)


def test_reward_collapse_a_nan_reward_neither_resets_nor_poisons_the_peak() -> None:
    stream = series("reward_mean", [0.8] * 10 + [math.nan] + [0.1] * 20)
    step, verdict = first_trip(verdicts("reward_collapse", stream))
    assert verdict.values["peak"] == pytest.approx(0.8)  # not reset by the NaN
    assert step == 23


# --- entropy_collapse (floor 0.01, patience 3, fall_fraction 0.1, fall_window 10) ----------------------------------

def test_entropy_below_the_floor_fires_after_patience() -> None:
    seen = verdicts("entropy_collapse", series("entropy", [0.02] * 15 + [0.005] * 3))
    assert all(seen[step] is None for step in range(1, 16))
    assert seen[16] is not None and not seen[16].tripped and seen[16].since_step == 16
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (18, 16)
    assert "entropy below its floor 0.01 for 3 step(s)" in verdict.message


def test_entropy_fast_fall_fires_at_once() -> None:
    seen = verdicts("entropy_collapse", series("entropy", [2.0] * 12 + [0.1] * 3))
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (15, 15)  # the 3-step mean reaches 0.1 < 0.1 x 2.0 at step 15
    assert "entropy fell from 2 to 0.1 in 10 steps (below 0.1 x)" in verdict.message


def test_entropy_fast_fall_is_not_hidden_by_a_floor_suspicion() -> None:
    seen = verdicts("entropy_collapse", series("entropy", [2.0] * 11 + [0.2, 0.2, 0.005]))
    verdict = seen[14]
    assert verdict is not None and verdict.tripped and "fell" in verdict.message


@pytest.mark.parametrize("values", [
    [0.01] * 20,  # exactly at the floor
    [0.02] * 10 + [0.005] * 2 + [0.02] * 3,  # one step short of patience
    [1.0 - 0.0125 * index for index in range(40)],  # a slow, healthy decline 1.0 -> 0.51
    [2.0] * 5 + [0.1] * 4,  # a fall, but fewer steps observed than fall_window
], ids=["at-floor", "patience-1", "slow-decline", "short-history"])
def test_entropy_near_misses_do_not_fire(values: list[float]) -> None:
    seen = verdicts("entropy_collapse", series("entropy", values))
    assert not tripped(seen) and seen[len(values)] is None


def test_entropy_fall_exactly_at_the_fraction_stays_quiet() -> None:
    values = [1.0] * 12 + [0.125] * 5
    assert not tripped(verdicts("entropy_collapse", series("entropy", values), fall_fraction=0.125))
    assert tripped(verdicts("entropy_collapse", series("entropy", values), fall_fraction=0.13))


# --- divergence_blowup (limit 2.0, teacher_limit 0.6, patience 3) --------------------------------------------------

@pytest.mark.parametrize("metric", ["kl", "teacher_divergence"])
def test_divergence_blowup_fires_on_either_divergence(metric: str) -> None:
    seen = verdicts("divergence_blowup", series(metric, [0.1] * 10 + [10.0] * 3))
    assert seen[11] is not None and not seen[11].tripped and seen[11].since_step == 11
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (13, 11)
    limit = "2" if metric == "kl" else "0.6"
    assert f"{metric} above {limit} for 3 step(s)" in verdict.message


def test_divergence_blowup_non_finite_counts_at_once() -> None:
    seen = verdicts("divergence_blowup", series("kl", [0.1, 0.1, math.inf, math.nan, math.nan]))
    assert seen[3] is not None and seen[3].since_step == 3
    assert tripped(seen) == [5]


def test_divergence_blowup_trip_on_one_is_not_hidden_by_a_suspicion_on_the_other() -> None:
    stream = [{"kl": 0.1, "teacher_divergence": 0.1}] * 5
    stream += [{"kl": 0.1, "teacher_divergence": 9.0}, {"kl": 9.0, "teacher_divergence": 9.0},
               {"kl": 9.0, "teacher_divergence": 9.0}]
    verdict = verdicts("divergence_blowup", stream)[8]
    assert verdict is not None and verdict.tripped and verdict.message.startswith("teacher_divergence")


@pytest.mark.parametrize("values", [
    [2.0] * 10,  # exactly at the limit
    [0.1] * 5 + [5.0] + [0.1] * 5,  # one outlier: the 3-step mean stays at 1.73
    [0.1] * 5 + [3.0] * 2 + [0.1] * 5,  # 3-step mean 2.03 at steps 7 and 8 only: one short of patience
], ids=["at-limit", "outlier", "patience-1"])
def test_divergence_blowup_near_misses_do_not_fire(values: list[float]) -> None:
    seen = verdicts("divergence_blowup", series("kl", values))
    assert not tripped(seen) and seen[len(values)] is None


# --- distill_coverage_lost (patience 5), all_truncated (1.0, 3), no_learning_signal (1.0, 5) ----------------------

STREAK_RULES = [  # rule, metric, a bad value, a near-miss value, default patience, message fragment
    ("distill_coverage_lost", "distill_coverage", 0.0, 0.001, 5, "targeted no token (coverage 0)"),
    ("all_truncated", "truncated_fraction", 1.0, 0.999, 3, "at least 100% of the completions were cut"),
    ("no_learning_signal", "zero_std_fraction", 1.0, 0.999, 5, "at least 100% of the groups had equal rewards"),
]


@pytest.mark.parametrize(("name", "metric", "bad", "near", "patience", "fragment"), STREAK_RULES)
def test_streak_rules_suspect_then_fire_after_patience(name: str, metric: str, bad: float, near: float,
                                                       patience: int, fragment: str) -> None:
    seen = verdicts(name, series(metric, [0.5] * 4 + [bad] * patience))
    assert all(seen[step] is None for step in range(1, 5))
    assert all(seen[step] is not None and not seen[step].tripped for step in range(5, 4 + patience))
    step, verdict = first_trip(seen)
    assert (step, verdict.since_step) == (4 + patience, 5)
    assert fragment in verdict.message and f"for {patience} step(s)" in verdict.message
    assert metric in verdict.values


@pytest.mark.parametrize(("name", "metric", "bad", "near", "patience", "fragment"), STREAK_RULES)
def test_streak_rules_near_misses_stay_quiet(name: str, metric: str, bad: float, near: float, patience: int,
                                             fragment: str) -> None:
    assert quiet(verdicts(name, series(metric, [near] * 20)))  # just on the healthy side of the threshold
    one_short = verdicts(name, series(metric, [bad] * (patience - 1) + [0.5]))
    assert not tripped(one_short) and one_short[patience] is None  # the streak is forgotten once it breaks
    assert quiet(verdicts(name, series("loss", [bad] * 20)))  # the metric absent


def test_fraction_thresholds_count_a_value_exactly_at_the_threshold() -> None:
    """all_truncated and no_learning_signal use >=: `fraction: 0.75` means 'at least 75%'."""
    stream = series("truncated_fraction", [0.75] * 3)
    assert tripped(verdicts("all_truncated", stream, fraction=0.75)) == [3]
    assert quiet(verdicts("all_truncated", stream, fraction=0.76))


# --- configured thresholds through GuardConfig ---------------------------------------------------------------------

def fire_steps(stream: Stream, rules: dict[str, dict[str, object]]) -> dict[str, int]:
    """The first step each rule fired at, running the whole guard with `rules` configured."""
    guard = Guard(GuardConfig(rules=rules))
    first: dict[str, int] = {}
    for step, metrics in enumerate(stream, 1):
        for finding in guard.observe(step, metrics).findings:
            first.setdefault(finding.rule, step)
    return first


@pytest.mark.parametrize(("name", "stream", "default_step", "params", "configured_step"), [
    ("grad_norm_spike", series("grad_norm", [1.0] * 5 + [4.0] + [1.0] + [20.0]), 8, {"factor": 3}, 6),
    ("grad_norm_spike", series("grad_norm", [1.0] * 3 + [20.0] * 5), 6, {"min_steps": 2}, 4),
    ("vanishing_gradients", [{"grad_norm": 1e-8, "loss": 0.3}] * 6, 3, {"patience": 5}, 5),
    ("vanishing_gradients", [{"grad_norm": 1e-4, "loss": 0.3}] * 6, None, {"grad_floor": 1e-3}, 3),
    ("reward_collapse", COLLAPSE, 22, {"patience": 3}, 15),
    ("reward_collapse", series("reward_mean", [0.8] * 10 + [0.5] * 20), None, {"fraction": 0.9}, 22),
    ("entropy_collapse", series("entropy", [0.05] * 6), None, {"floor": 0.1, "patience": 2}, 2),
    ("divergence_blowup", series("kl", [0.1] * 5 + [1.5] * 5), None, {"limit": 1.0}, 8),
    ("distill_coverage_lost", series("distill_coverage", [0.0] * 8), 5, {"patience": 2}, 2),
    ("all_truncated", series("truncated_fraction", [0.9] * 5), None, {"fraction": 0.9}, 3),
    ("no_learning_signal", series("zero_std_fraction", [0.8] * 8), None, {"fraction": 0.75, "patience": 8}, 8),
])
def test_configured_thresholds_change_when_a_rule_fires(name: str, stream: Stream, default_step: int | None,
                                                        params: dict[str, float], configured_step: int) -> None:
    assert fire_steps(stream, {}).get(name) == default_step
    assert fire_steps(stream, {name: params}).get(name) == configured_step


# --- a healthy run --------------------------------------------------------------------------------------------------

def healthy_streams() -> list[object]:
    streams: list[object] = [pytest.param(list(enumerate(demo_stream(), 1)), id="demo-values")]
    if HEALTHY_FILE.exists():
        streams.append(pytest.param(load_jsonl_stream(HEALTHY_FILE), id="healthy_trl_demo.jsonl"))
    else:
        streams.append(pytest.param(None, id="healthy_trl_demo.jsonl",
                                    marks=pytest.mark.skip(reason=f"{HEALTHY_FILE} not written yet")))
    return streams


@pytest.mark.parametrize("steps", healthy_streams())
def test_a_healthy_run_trips_nothing_and_no_stop_rule_suspects_it(steps: list[tuple[int, dict[str, float]]]) -> None:
    assert steps and all(metrics for _, metrics in steps)
    guard = Guard(GuardConfig())
    assert {active.rule.name for active in guard.rules} == {rule.name for rule in BUILTIN_RULES}
    for step, metrics in steps:
        decision = guard.observe(step, metrics)
        assert decision.action == "none" and not decision.findings, decision.lines()
        assert decision.healthy, f"step {step}: a stop or rollback rule suspects a healthy run"
        for active in guard.rules:
            verdict = active.rule.check(guard.history, active.params)
            assert verdict is None or (not verdict.tripped and active.action not in STOP_ACTIONS), (step, verdict)


def test_the_demo_values_are_quiet_for_every_rule_not_only_the_stop_rules() -> None:
    for checked in BUILTIN_RULES:
        assert quiet(verdicts(checked.name, demo_stream())), checked.name


def test_a_healthy_stream_is_not_quiet_by_accident() -> None:
    """The demo stream does reach the rules: one poisoned step in it makes each stop rule react."""
    stream = demo_stream()
    stream[20] = {**stream[20], "loss": math.nan}
    assert tripped(verdicts("non_finite", stream)) == [21]
    collapsed = demo_stream()[:20] + [{**metrics, "reward_mean": 0.05} for metrics in demo_stream()[20:]]
    assert tripped(verdicts("reward_collapse", collapsed))
    blown = demo_stream()[:20] + [{**metrics, "teacher_divergence": 5.0} for metrics in demo_stream()[20:]]
    assert tripped(verdicts("divergence_blowup", blown))[0] == 23  # above 0.6 from step 21


# --- the incremental reward curve judges as the definition does -----------------------------------------------------

def reference_reward_collapse(rewards: list[float], params: Mapping[str, float]) -> tuple[bool, int, int] | None:
    """The rule from its definition, recomputed from scratch: the step noise (mean absolute successive difference
    of the latest 100 finite rewards x sqrt(pi)/2, times noise_z), the mean of the finite rewards in each window of
    `smooth` (fewer at the start), the best level (each full-window or first-steps mean less noise / sqrt(its
    steps)), a streak of means below it ("collapsed") and a streak of means or single rewards below it ("falling").
    Returns (tripped, collapsed streak, index where the falling streak began)."""
    width = max(1, int(params["smooth"]))
    recent = [value for value in rewards[-100:] if math.isfinite(value)]
    steps = sorted(abs(b - a) for a, b in itertools.pairwise(recent))[:-1]
    noise = params["noise_z"] * (sum(steps) / len(steps) * math.sqrt(math.pi) / 2 if len(recent) >= 3 else 0.0)
    means = []
    for index in range(len(rewards)):
        window = [value for value in rewards[max(0, index - width + 1):index + 1] if math.isfinite(value)]
        means.append(sum(window) / len(window) if window else math.nan)

    def level(index: int) -> float:
        full = [means[i] for i in range(width - 1, index + 1) if math.isfinite(means[i])]
        candidates = [max(full) - noise / math.sqrt(width)] if full else []
        candidates += [means[i] - noise / math.sqrt(i + 1) for i in range(min(index + 1, width - 1))
                       if math.isfinite(means[i])]
        return max(candidates, default=math.nan)

    def below(value: float, peak: float, margin: float) -> bool:
        return (math.isfinite(value) and math.isfinite(peak) and peak >= params["min_peak"]
                and value < params["fraction"] * peak and peak - value >= max(params["min_drop"], margin))

    def collapsed(index: int) -> bool:
        return below(means[index], level(index), noise / math.sqrt(width))

    def falling(index: int) -> bool:
        return collapsed(index) or below(rewards[index], level(index), noise)

    def run_length(bad: object) -> int:
        length = 0
        for index in range(len(rewards) - 1, -1, -1):
            if not bad(index):  # type: ignore[operator]
                break
            length += 1
        return length

    count, fall = run_length(collapsed), run_length(falling)
    return (count >= params["patience"], count, len(rewards) - fall) if fall else None


def test_reward_collapse_matches_its_definition_on_random_streams_with_rollbacks() -> None:
    generator = random.Random(11)
    checked = rule("reward_collapse")
    for trial in range(30):
        params = {**checked.defaults, "smooth": generator.choice([1, 3, 5]), "patience": generator.choice([2, 5])}
        history, rewards, step = MetricHistory(), [], 0
        for _ in range(150):
            step += 1
            value = generator.choice([math.nan, generator.random(), 0.9, 0.05, 0.0])
            history.append(step, {"reward_mean": value})
            rewards.append(value)
            verdict = checked.check(history, params)
            expected = reference_reward_collapse(rewards, params)
            seen = None if verdict is None else (
                verdict.tripped, int(verdict.message.split(" for ")[-1].split()[0]) if " for " in verdict.message
                else 0, history.steps.index(verdict.since_step))
            assert seen == expected, (trial, step)
            if generator.random() < 0.03:  # a rollback forgets the latest steps; the rule must judge afresh
                keep = generator.randrange(0, step + 1)
                history.truncate_after(keep)
                rewards = rewards[:keep]
                step = keep


def test_smoothed_is_the_trailing_mean() -> None:
    assert smoothed([1.0, 2.0, 3.0, 4.0], 3, 2) == 3.5
    assert smoothed([1.0, 2.0, 3.0, 4.0], 1, 5) == 1.5
    assert smoothed([1.0, 2.0, 3.0], 2, 0) == 3.0  # a width of 0 counts as 1


def test_every_rule_judges_a_long_lived_history_as_a_fresh_copy_of_it() -> None:
    """Incremental state (history.memo) and rollbacks never change a verdict: after every step, each rule's
    verdict on the guard's history equals its verdict on a history rebuilt from scratch with the same steps."""
    generator = random.Random(5)
    history, kept = MetricHistory(), []
    for step in range(1, 301):
        metrics = {name: generator.choice([math.nan, 0.0, 1e-8, generator.random(), 3.0 * generator.random()])
                   for name in GUARD_METRICS if generator.random() < 0.8}
        history.append(step, metrics)
        kept.append((step, metrics))
        if generator.random() < 0.03:
            keep = generator.randrange(0, step)
            history.truncate_after(keep)
            kept = [(old, values) for old, values in kept if old <= keep]
            if not kept:
                continue
        fresh = MetricHistory()
        for old, values in kept:
            fresh.append(old, values)
        for checked in BUILTIN_RULES:
            assert repr(checked.check(history, checked.defaults)) == repr(checked.check(fresh, checked.defaults)), \
                (checked.name, step)
