"""Guard rules: pure functions over the metric history, registered through the plugin hooks.

A rule's `check(history, params)` looks at the step observed last and returns None (healthy), a suspicion (a
streak is building: the step is not one to go back to) or a trip (the rule fires). Built-in rules register
through `register_guard_rules` like a third-party plugin's would; see docs/guard.md for writing one.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from composer_core.guard.metrics import MetricHistory, is_finite
from composer_core.plugins import Register, hookimpl

Action = Literal["off", "warn", "stop", "rollback"]
ACTIONS: tuple[Action, ...] = ("off", "warn", "stop", "rollback")
Params = Mapping[str, float]


@dataclass(frozen=True)
class Verdict:
    """What a rule saw at the current step: `tripped` False is a suspicion (a streak that has not yet lasted long
    enough), True fires the rule's action. `since_step` is the first step of the streak."""

    tripped: bool
    message: str
    since_step: int
    values: dict[str, float] = field(default_factory=dict)


Check = Callable[[MetricHistory, Params], "Verdict | None"]


@dataclass(frozen=True)
class GuardRule:
    """A named rule: its check, its parameters' defaults and meanings, the action it takes unless the config
    says otherwise, and the canonical metrics it reads (composer_core.guard.metrics.GUARD_METRICS)."""

    name: str
    description: str
    check: Check
    defaults: Mapping[str, float]
    parameters: Mapping[str, str]
    action: Action
    metrics: tuple[str, ...]

    def __post_init__(self) -> None:
        if set(self.defaults) != set(self.parameters):
            raise ValueError(f"guard rule {self.name!r}: every parameter needs a default and a description")
        if self.action not in ACTIONS:
            raise ValueError(f"guard rule {self.name!r}: action {self.action!r} is not one of {ACTIONS}")


def streak(history: MetricHistory, name: str, bad: Callable[[list[float], int], bool]) -> tuple[int, int | None]:
    """How many of `name`'s latest values in a row are bad, and the step the streak began at. `bad(values, i)`
    judges the value at index i (it may look at earlier values). Zero when the current step did not report it."""
    series = history.series(name)
    if not series or series[-1][0] != history.step:
        return 0, None
    values = history.values(name)
    count = 0
    for index in range(len(values) - 1, -1, -1):
        if not bad(values, index):
            break
        count += 1
    return count, (series[len(series) - count][0] if count else None)


def from_streak(count: int, since: int | None, patience: float, message: str,
                values: dict[str, float]) -> Verdict | None:
    """No verdict without a streak; a suspicion while it is shorter than `patience`; a trip once it lasts."""
    if not count or since is None:
        return None
    return Verdict(count >= patience, f"{message} for {count} step(s)", since, values)


def smoothed(values: list[float], index: int, width: int) -> float:
    """The mean of the `width` values ending at `index` (fewer at the start; a width below 1 counts as 1)."""
    window = values[max(0, index - max(1, width) + 1):index + 1]
    return sum(window) / len(window)


def steps_param(params: Params, name: str) -> int:
    """A step-count parameter as a whole number of at least 1 (0 or less would leave nothing to average over)."""
    return max(1, int(params[name]))


# ---- the built-in rules ------------------------------------------------------------------------------------------

def check_non_finite(history: MetricHistory, params: Params) -> Verdict | None:
    bad = {name: value for name in ("loss", "grad_norm")
           if (value := history.current(name)) is not None and not is_finite(value)}
    if not bad:
        return None
    shown = ", ".join(f"{name} = {value}" for name, value in bad.items())
    return Verdict(True, f"{shown}: the step is not applied", history.step, bad)


def check_grad_norm_spike(history: MetricHistory, params: Params) -> Verdict | None:
    values = history.values("grad_norm")
    current = history.current("grad_norm")
    earlier = [value for value in values[:-1][-steps_param(params, "window"):] if is_finite(value)]
    if not is_finite(current) or not earlier or len(earlier) < params["min_steps"]:
        return None
    typical = statistics.median(earlier)
    if typical <= 0 or current <= params["factor"] * typical:
        return None
    return Verdict(True, f"grad_norm {current:.4g} is {current / typical:.1f}x the median {typical:.4g} of the "
                   f"previous {len(earlier)} steps (limit {params['factor']:g}x)", history.step,
                   {"grad_norm": current, "median": typical})


def check_vanishing_gradients(history: MetricHistory, params: Params) -> Verdict | None:
    losses = history.series("loss")
    grads = history.series("grad_norm")

    def loss_at(step: int) -> float | None:  # a binary search: the streak looks at a few steps of a long history
        found = bisect.bisect_left(losses, step, key=lambda pair: pair[0])
        return losses[found][1] if found < len(losses) and losses[found][0] == step else None

    def bad(values: list[float], index: int) -> bool:
        step_loss = loss_at(grads[index][0])
        return (is_finite(values[index]) and values[index] < params["grad_floor"] and step_loss is not None
                and is_finite(step_loss) and abs(step_loss) > params["loss_floor"])

    count, since = streak(history, "grad_norm", bad)
    return from_streak(count, since, params["patience"],
                       f"grad_norm below {params['grad_floor']:g} while |loss| > {params['loss_floor']:g}",
                       {"grad_norm": history.current("grad_norm") or 0.0, "loss": history.current("loss") or 0.0})


def reward_curve(history: MetricHistory, width: int) -> tuple[list[float], list[float]]:
    """Per reward_mean value: the mean of the finite values among the `width` ending there (fewer in the first
    steps; NaN when none), and the running peak of those means over full windows only (NaN before the first).
    Extended incrementally through `history.memo`, so a step costs O(width), not O(history); a NaN reward neither
    poisons nor resets the peak."""
    rewards = history.values("reward_mean")
    means, peaks = history.memo.setdefault(("reward_collapse", width), ([], []))
    for index in range(len(means), len(rewards)):
        window = [value for value in rewards[max(0, index - width + 1):index + 1] if is_finite(value)]
        mean = sum(window) / len(window) if window else math.nan
        peak = peaks[-1] if peaks else math.nan
        if index >= width - 1 and is_finite(mean) and not mean <= peak:
            peak = mean
        means.append(mean)
        peaks.append(peak)
    return means, peaks


def level_peak(means: list[float], peaks: list[float], index: int, width: int, noise: float) -> float:
    """The best reward level the run has shown up to `index`: each mean less its own luck (`noise` over the square
    root of the steps it averages), so that a lucky step or window does not set the bar."""
    candidates = [peaks[index] - noise / math.sqrt(width)] if is_finite(peaks[index]) else []
    candidates += [means[early] - noise / math.sqrt(early + 1) for early in range(min(index + 1, width - 1))
                   if is_finite(means[early])]
    return max(candidates, default=math.nan)


NOISE_STEPS = 100  # the step-to-step noise is estimated over this many latest steps


def step_noise(rewards: list[float]) -> float:
    """The standard deviation of one step's reward around its level, from the mean absolute difference of
    successive steps without the largest one (a collapse is one large difference, not noise); 0 with fewer than
    3 steps. For normal noise E|a - b| = 2 sigma / sqrt(pi)."""
    recent = [value for value in rewards[-NOISE_STEPS:] if is_finite(value)]
    if len(recent) < 3:
        return 0.0
    differences = sorted(abs(b - a) for a, b in itertools.pairwise(recent))[:-1]
    return sum(differences) / len(differences) * math.sqrt(math.pi) / 2


def below_peak(value: float, peak: float, margin: float, params: Params) -> bool:
    """Whether `value` has fallen below `fraction` of `peak`, by at least `min_drop` and the noise `margin`."""
    return (is_finite(value) and is_finite(peak) and peak >= params["min_peak"] and value < params["fraction"] * peak
            and peak - value >= max(params["min_drop"], margin))


def check_reward_collapse(history: MetricHistory, params: Params) -> Verdict | None:
    """Fires when the smoothed reward has stayed below its best level for `patience` steps. A single step's reward
    below it is a suspicion, so that the last good state kept is the one from before the fall, even when the fall
    takes a while to show in the mean. Every margin scales with the run's own step-to-step reward noise."""
    width = steps_param(params, "smooth")
    means, peaks = reward_curve(history, width)
    rewards = history.values("reward_mean")
    noise = params["noise_z"] * step_noise(rewards)  # one step's noise; a mean of `width` steps has less

    def collapsed(values: list[float], index: int) -> bool:
        level = level_peak(means, peaks, index, width, noise)
        return below_peak(means[index], level, noise / math.sqrt(width), params)

    def falling(values: list[float], index: int) -> bool:
        level = level_peak(means, peaks, index, width, noise)
        return collapsed(values, index) or below_peak(rewards[index], level, noise, params)

    count, _ = streak(history, "reward_mean", collapsed)
    _, since = streak(history, "reward_mean", falling)
    if since is None:
        return None
    peak = level_peak(means, peaks, len(means) - 1, width, noise)
    values = {"reward_mean": rewards[-1], "smoothed": means[-1], "peak": peak}
    if not count:
        return Verdict(False, f"reward_mean {rewards[-1]:.4g} fell below {params['fraction']:g} x its best level "
                       f"{peak:.4g}", since, values)
    return Verdict(count >= params["patience"], f"reward_mean (mean of {width} steps) {means[-1]:.4g} below "
                   f"{params['fraction']:g} x its best level {peak:.4g} for {count} step(s)", since, values)


def check_entropy_collapse(history: MetricHistory, params: Params) -> Verdict | None:
    entropy = history.values("entropy")
    lag = steps_param(params, "fall_window")

    def floor(values: list[float], index: int) -> bool:
        return is_finite(values[index]) and values[index] < params["floor"]

    count, since = streak(history, "entropy", floor)
    verdict = from_streak(count, since, params["patience"], f"entropy below its floor {params['floor']:g}",
                          {"entropy": entropy[-1]} if entropy else {})
    if (verdict is not None and verdict.tripped) or history.current("entropy") is None or len(entropy) <= lag:
        return verdict
    now, before = smoothed(entropy, len(entropy) - 1, 3), smoothed(entropy, len(entropy) - 1 - lag, 3)
    if before > 0 and now < params["fall_fraction"] * before:  # a fast fall fires even while the floor is suspected
        return Verdict(True, f"entropy fell from {before:.4g} to {now:.4g} in {lag} steps (below "
                       f"{params['fall_fraction']:g} x)", history.step, {"entropy": now, "before": before})
    return verdict


def check_divergence_blowup(history: MetricHistory, params: Params) -> Verdict | None:
    suspicion = None
    for name, limit in (("kl", params["limit"]), ("teacher_divergence", params["teacher_limit"])):
        length, since = streak(history, name, lambda values, index, limit=limit: not is_finite(values[index])
                               or values[index] > limit)
        verdict = from_streak(length, since, params["patience"], f"{name} above {limit:g}",
                              {name: history.current(name) or 0.0})
        if verdict is not None and verdict.tripped:  # a suspicion on one must not hide a trip on the other
            return verdict
        suspicion = suspicion or verdict
    return suspicion


def check_distill_coverage_lost(history: MetricHistory, params: Params) -> Verdict | None:
    count, since = streak(history, "distill_coverage", lambda values, index: values[index] <= 0.0)
    return from_streak(count, since, params["patience"], "self-distillation targeted no token (coverage 0)",
                       {"distill_coverage": 0.0})


def at_least_fraction(history: MetricHistory, name: str, params: Params, what: str) -> Verdict | None:
    """A streak of steps where metric `name` is at least `fraction` (a share of the batch)."""
    count, since = streak(history, name, lambda values, index: values[index] >= params["fraction"])
    return from_streak(count, since, params["patience"], f"at least {params['fraction']:.0%} of {what}",
                       {name: history.current(name) or 0.0})


def check_all_truncated(history: MetricHistory, params: Params) -> Verdict | None:
    return at_least_fraction(history, "truncated_fraction", params,
                             "the completions were cut at the length limit")


def check_no_learning_signal(history: MetricHistory, params: Params) -> Verdict | None:
    return at_least_fraction(history, "zero_std_fraction", params, "the groups had equal rewards (no advantage)")


PATIENCE = "consecutive steps the condition must hold before the rule fires"
BUILTIN_RULES = (
    GuardRule("non_finite", "the loss or the gradient norm is NaN or infinite", check_non_finite, {}, {}, "stop",
              ("loss", "grad_norm")),
    GuardRule("grad_norm_spike", "the gradient norm jumps far above its recent median", check_grad_norm_spike,
              {"factor": 10.0, "window": 20, "min_steps": 5},
              {"factor": "how many times the median counts as a spike", "window": "steps the median is taken over",
               "min_steps": "steps observed before the rule can fire"}, "warn", ("grad_norm",)),
    GuardRule("vanishing_gradients", "the gradient norm is near zero while the loss is not (SDPO's silent failure)",
              check_vanishing_gradients, {"grad_floor": 1e-6, "loss_floor": 1e-4, "patience": 3},
              {"grad_floor": "a gradient norm below it counts as vanished", "loss_floor": "|loss| above it counts "
               "as a loss that should move the weights", "patience": PATIENCE}, "warn", ("grad_norm", "loss")),
    GuardRule("reward_collapse", "the reward falls well below its running peak and stays there",
              check_reward_collapse, {"fraction": 0.5, "min_drop": 0.15, "noise_z": 3.0, "patience": 10,
                                      "smooth": 5, "min_peak": 0.05},
              {"fraction": "the share of the peak below which the reward counts as collapsed (rewards are taken as "
               "non-negative)", "min_drop": "the fall must also be at least this much in reward units",
               "noise_z": "and at least this many standard deviations of the step-to-step reward noise (small "
               "batches are noisy)", "patience": PATIENCE, "smooth": "steps the reward is averaged over",
               "min_peak": "the peak must reach this before a fall counts"}, "stop", ("reward_mean",)),
    GuardRule("entropy_collapse", "the policy's entropy drops below a floor, or falls fast",
              check_entropy_collapse, {"floor": 0.01, "patience": 3, "fall_fraction": 0.1, "fall_window": 10},
              {"floor": "entropy (nats per token) below which the policy counts as collapsed", "patience": PATIENCE,
               "fall_fraction": "a fall to this share of the value fall_window steps earlier fires at once",
               "fall_window": "steps the fall is measured over"}, "warn", ("entropy",)),
    GuardRule("divergence_blowup", "the KL to the reference or the divergence to the teacher stays above a limit",
              check_divergence_blowup, {"limit": 2.0, "teacher_limit": 0.6, "patience": 3},
              {"limit": "KL to the reference, nats per token", "teacher_limit": "self-distillation divergence per "
               "targeted token (the default JSD is at most ln 2 = 0.69)", "patience": PATIENCE}, "stop",
              ("kl", "teacher_divergence")),
    GuardRule("distill_coverage_lost", "self-distillation targets no token any more (the teacher gets no context)",
              check_distill_coverage_lost, {"patience": 5}, {"patience": PATIENCE}, "warn", ("distill_coverage",)),
    GuardRule("all_truncated", "(nearly) every completion hits the length limit", check_all_truncated,
              {"fraction": 1.0, "patience": 3}, {"fraction": "share of truncated completions", "patience": PATIENCE},
              "warn", ("truncated_fraction",)),
    GuardRule("no_learning_signal", "(nearly) every group has equal rewards, so no advantage is left",
              check_no_learning_signal, {"fraction": 1.0, "patience": 5},
              {"fraction": "share of zero-std groups", "patience": PATIENCE}, "warn", ("zero_std_fraction",)),
)


@hookimpl
def register_guard_rules(register: Register) -> None:
    for rule in BUILTIN_RULES:
        register(rule)
