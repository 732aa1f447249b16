"""The guard over one run: the action each step calls for, whether its start is a good state to keep, what the
backend reports back (kept, skipped, rolled back, stopped), and the report a stopped run leaves behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from composer_core.errors import ConfigError
from composer_core.guard import GUARD_EXIT_CODE, REPORT_FILE, Guard, GuardConfig, GuardRule, MetricHistory, Verdict
from composer_core.guard.rules import Params
from composer_core.plugins import Registry

GOOD_REWARD = [0.8] * 10  # steps 1..10
# After a fall to 0.1 the 5-step mean drops below 0.5 x 0.8 at step 13; reward_collapse (patience 10) trips at 22.
FALLEN_REWARD = [0.1] * 12  # steps 11..22


def scripted_check(metric: str) -> Any:
    """A rule driven directly by one metric: 2 trips, 1 is a suspicion, anything else (or absent) is healthy."""

    def check(history: MetricHistory, params: Params) -> Verdict | None:
        value = history.current(metric)
        if value == 2:
            return Verdict(True, f"{metric} says trip (limit {params['limit']:g})", history.step, {metric: value})
        if value == 1:
            return Verdict(False, f"{metric} says suspect", history.step, {metric: value})
        return None

    return check


def scripted_registry() -> Registry[Any]:
    """Three scripted rules, one per action, in a registry of their own."""
    registry: Registry[Any] = Registry("guard rule")
    for name, action in (("stopper", "stop"), ("roller", "rollback"), ("warner", "warn")):
        rule = GuardRule(name, f"the {action} rule", scripted_check(name), {"limit": 1.0}, {"limit": "unused"},
                         action, ())
        registry.add(name, rule, plugin="tests", source="test")
    return registry


def scripted(**settings: Any) -> Guard:
    return Guard(GuardConfig(**settings), scripted_registry())


@pytest.mark.parametrize(("metrics", "action", "fired"), [
    ({"stopper": 2, "roller": 2, "warner": 2}, "stop", {"stopper", "roller", "warner"}),
    ({"roller": 2, "warner": 2}, "rollback", {"roller", "warner"}),
    ({"stopper": 2, "warner": 2}, "stop", {"stopper", "warner"}),
    ({"warner": 2}, "warn", {"warner"}),
    ({"stopper": 0, "roller": 0, "warner": 0}, "none", set()),
], ids=["all", "rollback+warn", "stop+warn", "warn", "none"])
def test_the_most_severe_action_wins_and_every_finding_is_reported(metrics: dict[str, float], action: str,
                                                                   fired: set[str]) -> None:
    decision = scripted().observe(1, metrics)
    assert decision.action == action
    assert {finding.rule for finding in decision.findings} == fired
    assert decision.metrics() == {f"guard/{name}": 1.0 for name in fired}
    assert all(finding.tripped and finding.step == 1 for finding in decision.findings)
    lines = decision.lines()
    assert len(lines) == len(fired)
    if "roller" in fired:
        assert "guard: step 1: roller (rollback): roller says trip (limit 1) (since step 1)" in lines


@pytest.mark.parametrize(("metrics", "healthy"), [
    ({}, True),
    ({"warner": 1}, True),  # a warn rule's suspicion does not make the state unfit to keep
    ({"warner": 2}, True),  # nor does a warn rule firing
    ({"stopper": 1}, False),  # a stop rule's suspicion: the streak may have begun, do not keep this state
    ({"roller": 1}, False),
    ({"stopper": 2}, False),
], ids=["nothing", "warn-suspect", "warn-trip", "stop-suspect", "rollback-suspect", "stop-trip"])
def test_healthy_says_whether_the_state_is_fit_to_keep(metrics: dict[str, float], healthy: bool) -> None:
    decision = scripted().observe(1, metrics)
    assert decision.healthy is healthy
    assert decision.action == ("stop" if metrics.get("stopper") == 2 else "warn" if metrics.get("warner") == 2
                               else "none")
    assert not [finding for finding in decision.findings if not finding.tripped]  # suspicions are not findings


def test_configured_actions_replace_the_rules_own() -> None:
    guard = scripted(rules={"warner": {"action": "stop"}, "stopper": {"action": "off"}, "roller": {"action": "warn"}})
    assert {active.rule.name: active.action for active in guard.rules} == {"warner": "stop", "roller": "warn"}
    assert guard.observe(1, {"warner": 1}).healthy is False  # now a stop rule: its suspicion counts
    assert guard.observe(2, {"stopper": 2, "roller": 2}).action == "warn"  # stopper is off, roller only warns
    assert guard.observe(3, {"warner": 2}).action == "stop"


def test_rollback_turns_into_stop_after_max_rollbacks() -> None:
    guard = scripted(max_rollbacks=2)
    guard.kept_good_state(1)
    guard.observe(1, {})
    for step in (2, 3):
        decision = guard.observe(step, {"roller": 2})
        assert (decision.action, decision.reason) == ("rollback", "")
        guard.rolled_back(step, learning_rate=0.5 ** (step - 1))
    decision = guard.observe(4, {"roller": 2})
    assert decision.action == "stop"
    assert decision.reason == "the rollback limit (2) is reached"
    guard.stopped(decision, checkpoint="runs/x/guard-last-good")
    assert guard.stop is not None and guard.stop["rules"] == ["roller"]
    assert guard.stop["message"] == "roller: roller says trip (limit 1) (the rollback limit (2) is reached)"
    assert [rollback["step"] for rollback in guard.rollbacks] == [2, 3]


def test_no_rollback_allowed_means_the_first_rollback_stops() -> None:
    decision = scripted(max_rollbacks=0).observe(1, {"roller": 2})
    assert decision.action == "stop" and "rollback limit (0)" in decision.reason


def reward_guard(action: str = "rollback") -> Guard:
    return Guard(GuardConfig(rules={"reward_collapse": {"action": action}}))


def test_a_rollback_forgets_the_streak_so_the_resumed_run_is_judged_afresh() -> None:
    guard = reward_guard()
    for step, reward in enumerate(GOOD_REWARD, 1):
        assert guard.observe(step, {"reward_mean": reward}).healthy
        guard.kept_good_state(step)
    decisions = [guard.observe(step, {"reward_mean": reward}) for step, reward in enumerate(FALLEN_REWARD, 11)]
    assert [decision.action for decision in decisions].index("rollback") == 11  # step 22
    assert not decisions[2].healthy  # step 13: the streak began, the state is not kept
    guard.rolled_back(22, learning_rate=5e-5)
    assert guard.rollbacks == [{"step": 22, "restored_step": 10, "learning_rate": 5e-5}]
    assert guard.history.steps == list(range(1, 11))
    resumed = guard.observe(11, {"reward_mean": 0.8})  # the step numbers after the restored state are free again
    assert (resumed.action, resumed.healthy, resumed.findings) == ("none", True, [])


def test_without_the_rollback_the_same_next_step_still_trips() -> None:
    """The control for the test above: the streak, not the step's own value, is what fires."""
    guard = reward_guard()
    for step, reward in enumerate(GOOD_REWARD + FALLEN_REWARD, 1):
        guard.observe(step, {"reward_mean": reward})
    assert guard.observe(23, {"reward_mean": 0.8}).action == "rollback"


def test_rolled_back_without_a_kept_state_is_an_error() -> None:
    guard = reward_guard()
    guard.observe(1, {"reward_mean": 0.5})
    with pytest.raises(ValueError, match="without a kept good state"):
        guard.rolled_back(1, learning_rate=None)


def test_steps_must_increase() -> None:
    guard = reward_guard()
    guard.observe(5, {"reward_mean": 0.5})
    for step in (5, 4):
        with pytest.raises(ValueError, match=f"guard steps must increase: step {step} after step 5"):
            guard.observe(step, {"reward_mean": 0.5})
    assert guard.history.steps == [5] and guard.report()["steps_observed"] == 1


def test_a_value_that_is_not_a_number_leaves_no_half_recorded_step() -> None:
    guard = reward_guard()
    with pytest.raises((TypeError, ValueError)):
        guard.observe(1, {"reward_mean": 0.5, "loss": "high"})  # type: ignore[dict-item]
    assert guard.history.steps == [] and guard.history.series("reward_mean") == []
    assert guard.observe(1, {"reward_mean": 0.5}).action == "none"  # the step can be observed again


def test_disabled_guard_has_no_rules_and_never_acts() -> None:
    guard = Guard(GuardConfig(enabled=False, rules={"not_a_rule": {"patience": 1}}))  # not even checked
    assert guard.rules == []
    decision = guard.observe(1, {"loss": math.nan, "grad_norm": math.inf})
    assert (decision.action, decision.healthy, decision.findings) == ("none", True, [])
    report = guard.report()
    assert report["enabled"] is False and report["rules"] == [] and report["exit_code"] == 0


def test_default_guard_runs_every_builtin_rule_with_its_own_action_and_thresholds() -> None:
    guard = Guard(GuardConfig())
    actions = {active.rule.name: active.action for active in guard.rules}
    assert actions["non_finite"] == actions["reward_collapse"] == actions["divergence_blowup"] == "stop"
    assert all(active.params == dict(active.rule.defaults) for active in guard.rules)


def stopped_run() -> tuple[Guard, Any]:
    """A run that warned once, skipped a step, kept states and stopped on a NaN loss at step 4."""
    guard = Guard(GuardConfig(rules={"all_truncated": {"patience": 1}}))
    for step in (1, 2):
        assert guard.observe(step, {"loss": 0.1, "grad_norm": 0.5}).healthy
        guard.kept_good_state(step)
    assert guard.observe(3, {"loss": 0.1, "truncated_fraction": 1.0}).action == "warn"
    guard.skipped(3, "non-finite gradients")
    decision = guard.observe(4, {"loss": math.nan, "grad_norm": 0.5, "truncated_fraction": 1.0})
    assert decision.action == "stop" and not decision.healthy
    guard.stopped(decision, checkpoint="runs/x/last-good")
    return guard, decision


def test_report_holds_the_whole_story_of_a_stopped_run() -> None:
    guard, _ = stopped_run()
    report = guard.report()
    assert report["exit_code"] == GUARD_EXIT_CODE == 3 and report["enabled"] is True
    stop = report["stopped"]
    assert stop["step"] == 4 and stop["rules"] == ["non_finite"]  # the warning is not a cause of the stop
    assert stop["message"].startswith("non_finite: loss = nan: the step is not applied")
    assert (stop["last_good_step"], stop["checkpoint"]) == (2, "runs/x/last-good")
    assert report["last_good_step"] == 2 and report["steps_observed"] == 4
    assert report["skipped_steps"] == [{"step": 3, "reason": "non-finite gradients"}]
    assert [(event["rule"], event["step"], event["last_step"], event["action"]) for event in report["findings"]] == [
        ("all_truncated", 3, 4, "warn"), ("non_finite", 4, 4, "stop")]  # a warning lasting two steps: one event
    rules = {entry["name"]: entry for entry in report["rules"]}
    assert rules["all_truncated"]["params"] == {"fraction": 1.0, "patience": 1.0}
    assert rules["non_finite"] == {"name": "non_finite", "action": "stop", "params": {}}


def test_a_lasting_warning_is_one_event_printed_once_and_a_new_one_after_it_clears() -> None:
    """entropy_collapse's fast fall (warn) holds for as long as the fall_window still reaches back before the fall:
    one event and one printed line for the whole stretch, `guard/entropy_collapse` at every step; once it clears,
    a second fall is a second event."""
    guard = Guard(GuardConfig())
    entropies = [2.0] * 12 + [0.1] * 12 + [2.0] * 12 + [0.1] * 3
    decisions = [guard.observe(step, {"entropy": value}) for step, value in enumerate(entropies, start=1)]
    warned = [decision.step for decision in decisions if decision.metrics().get("guard/entropy_collapse")]
    printed = [decision.step for decision in decisions for _ in decision.lines()]
    events = [(event["step"], event["last_step"], event["steps"]) for event in guard.report()["findings"]]
    first_fall = list(range(15, 24))  # the fall is seen from step 15 until the window no longer reaches before it
    assert warned == [*first_fall, 39] and printed == [15, 39]
    assert events == [(15, 23, len(first_fall)), (39, 39, 1)]


def test_a_weight_taken_back_at_a_step_does_not_restart_a_lasting_warning() -> None:
    """`non_finite_update` after `observe` at one step: the warning going on at that step is still going on at the
    next (printed once), and the non-finite finding is one event."""
    guard = Guard(GuardConfig(rules={"non_finite": {"action": "warn"}, "all_truncated": {"patience": 1}}))
    decisions = []
    for step in range(1, 5):
        decisions.append(guard.observe(step, {"loss": 0.1, "truncated_fraction": 1.0}))
        if step == 2:
            decisions.append(guard.non_finite_update(step))
    printed = [line.split(": ")[2].split(" ")[0] for decision in decisions for line in decision.lines()]
    assert printed == ["all_truncated", "non_finite"]
    events = [(event["rule"], event["step"], event["last_step"], event["steps"])
              for event in guard.report()["findings"]]
    assert events == [("all_truncated", 1, 4, 4), ("non_finite", 2, 2, 1)]


def test_a_run_that_did_not_stop_reports_exit_code_zero() -> None:
    guard = Guard(GuardConfig())
    guard.observe(1, {"loss": 0.1})
    report = guard.report()
    assert (report["exit_code"], report["stopped"], report["findings"], report["rollbacks"]) == (0, None, [], [])


def strict_json(text: str) -> Any:
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_write_report_writes_strict_json_into_the_folder(tmp_path: Path) -> None:
    guard, _ = stopped_run()
    path = guard.write_report(tmp_path)
    assert path == tmp_path / REPORT_FILE
    written = strict_json(path.read_text())
    assert written["stopped"] == guard.report()["stopped"]
    nan_finding = next(event for event in written["findings"] if event["rule"] == "non_finite")
    assert nan_finding["values"] == {"loss": "nan"}  # JSON has no NaN: the value is named
    assert sorted(os.listdir(tmp_path)) == [REPORT_FILE]  # no temporary file left beside it


def test_write_report_replaces_an_old_report_whole_or_not_at_all(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    guard, _ = stopped_run()
    (tmp_path / REPORT_FILE).write_text('{"old": true}')

    def fail(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        guard.write_report(tmp_path)
    assert strict_json((tmp_path / REPORT_FILE).read_text()) == {"old": True}
    assert sorted(os.listdir(tmp_path)) == [REPORT_FILE]
    monkeypatch.undo()
    guard.write_report(tmp_path)
    assert strict_json((tmp_path / REPORT_FILE).read_text())["exit_code"] == GUARD_EXIT_CODE


def test_write_report_refuses_a_missing_folder_or_a_file(tmp_path: Path) -> None:
    guard, _ = stopped_run()
    missing = tmp_path / "no" / "such"
    with pytest.raises(ConfigError, match=f"cannot write guard report {missing / REPORT_FILE}: the folder {missing} "
                                          "does not exist; create it first"):
        guard.write_report(missing)
    assert not (tmp_path / "no").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        guard.write_report(a_file)


@pytest.mark.parametrize(("setting", "action"), [({}, "stop"), ({"action": "off"}, "warn"),
                                                 ({"action": "rollback"}, "rollback")])
def test_a_non_finite_update_is_a_non_finite_finding_with_that_rules_action(setting: dict[str, str],
                                                                           action: str) -> None:
    guard = Guard(GuardConfig(rules={"non_finite": setting}))
    decision = guard.non_finite_update(7)
    assert (decision.step, decision.action, decision.healthy) == (7, action, False)
    assert [(finding.rule, finding.action) for finding in decision.findings] == [("non_finite", action)]
    assert "made a weight non-finite" in decision.findings[0].message
    assert [event["step"] for event in guard.report()["findings"]] == [7]


def test_a_non_finite_update_respects_the_rollback_limit() -> None:
    decision = Guard(GuardConfig(max_rollbacks=0, rules={"non_finite": {"action": "rollback"}})).non_finite_update(2)
    assert decision.action == "stop" and decision.reason == "the rollback limit (0) is reached"
