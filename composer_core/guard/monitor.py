"""The guard itself: the configured rules over one run's metric stream, the action each step calls for, and the
report a stopped run leaves behind. Backends call `observe` once per optimizer step, before applying it."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError
from composer_core.files import write_text_atomic
from composer_core.guard.metrics import MetricHistory
from composer_core.guard.rules import Action, GuardRule, Verdict
from composer_core.guard.settings import GuardConfig
from composer_core.plugins import Registry, registries

GUARD_EXIT_CODE = 3  # a run the guard stopped; 1 is an error, 130/143 a signal
REPORT_FILE = "guard_report.json"
SEVERITY: dict[str, int] = {"none": 0, "warn": 1, "rollback": 2, "stop": 3}


@dataclass(frozen=True)
class ActiveRule:
    """A rule with the action and thresholds this run uses."""

    rule: GuardRule
    action: Action
    params: dict[str, float]


@dataclass(frozen=True)
class Finding:
    """A rule's verdict at one step, with the action it calls for."""

    rule: str
    step: int
    action: Action
    tripped: bool
    message: str
    since_step: int
    values: dict[str, float]
    continued: bool = False  # the rule also tripped at the step observed before: the same condition going on

    def line(self) -> str:
        return f"guard: step {self.step}: {self.rule} ({self.action}): {self.message} (since step {self.since_step})"


@dataclass
class StepDecision:
    """What the backend must do at this step: `action` none / warn / rollback / stop; `healthy` says whether
    the weights the step started from are a good state to keep (no stop or rollback rule tripped or suspects)."""

    step: int
    action: str
    healthy: bool
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""

    def metrics(self) -> dict[str, float]:
        """`guard/<rule>` = 1 for every rule that fired, for the backend's metric log."""
        return {f"guard/{finding.rule}": 1.0 for finding in self.findings}

    def lines(self) -> list[str]:
        """A line per finding, except warnings that continue from the step before: a condition that lasts is
        printed when it starts (its `guard/<rule>` metric stays 1 at every step)."""
        return [finding.line() for finding in self.findings if not (finding.continued and finding.action == "warn")]


def active_rules(config: GuardConfig, registry: Registry[Any] | None = None) -> list[ActiveRule]:
    """Every registered rule with its configured action and thresholds; a misspelt rule or threshold is refused,
    naming what exists."""
    registry = registry if registry is not None else registries().guard_rules
    unknown = sorted(set(config.rules) - set(registry.names()))
    if unknown:
        raise ConfigError(f"guard.rules names {unknown}, which no plugin registered; registered guard rules: "
                          f"{', '.join(registry.names())}")
    active = []
    for entry in registry:
        rule: GuardRule = entry.item
        settings = dict(config.rules.get(rule.name, {}))
        action = settings.pop("action", rule.action)
        extra = sorted(set(settings) - set(rule.defaults))
        if extra:
            raise ConfigError(f"guard.rules.{rule.name} has no setting {extra}; it takes: action, "
                              f"{', '.join(rule.defaults) or '(no thresholds)'}")
        params = {**rule.defaults, **{name: _number(rule.name, name, value) for name, value in settings.items()}}
        active.append(ActiveRule(rule, action, params))
    return active


def _number(rule: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"guard.rules.{rule}.{name} must be a finite number, got {value!r}")
    return float(value)


class Guard:
    """The configured rules over one run. `observe(step, metrics)` returns the decision for that step; the
    backend reports what it did (`skipped`, `rolled_back`, `stopped`), and `report()` holds the whole story."""

    def __init__(self, config: GuardConfig, registry: Registry[Any] | None = None) -> None:
        self.config = config
        self.rules = [rule for rule in active_rules(config, registry) if rule.action != "off"] \
            if config.enabled else []
        self.history = MetricHistory()
        self.events: list[dict[str, Any]] = []
        self.skipped_steps: list[dict[str, Any]] = []
        self.rollbacks: list[dict[str, Any]] = []
        self.last_good_step: int | None = None
        self.stop: dict[str, Any] | None = None
        self._latest: dict[str, dict[str, Any]] = {}  # rule -> its latest event in the report

    def observe(self, step: int, metrics: Mapping[str, float]) -> StepDecision:
        """Record one step's metrics (canonical names, composer_core.guard.metrics) and decide."""
        self.history.append(step, metrics)
        findings, suspect = [], False
        for active in self.rules:
            verdict = active.rule.check(self.history, active.params)
            if verdict is None:
                continue
            if active.action in ("stop", "rollback"):
                suspect = True
            if verdict.tripped:
                findings.append(self._finding(active, step, verdict))
        decision = StepDecision(step, max((finding.action for finding in findings), key=SEVERITY.__getitem__,
                                          default="none"), healthy=not suspect, findings=findings)
        self._limit_rollbacks(decision)
        self._record(findings)
        return decision

    def _record(self, findings: list[Finding]) -> None:
        """Findings into the report: a rule that keeps tripping step after step is one event, its `last_step` and
        `steps` counting how long it lasted (a second finding of a rule at one step adds nothing)."""
        for finding in findings:
            event = self._latest.get(finding.rule)
            if event is not None and event["last_step"] == finding.step:
                continue
            if finding.continued and event is not None:
                event["last_step"], event["steps"] = finding.step, event["steps"] + 1
            else:
                self._latest[finding.rule] = {**asdict(finding), "last_step": finding.step, "steps": 1}
                self.events.append(self._latest[finding.rule])

    def _continues(self, rule: str, step: int) -> bool:
        """Whether `rule` also tripped at the step observed before `step` (after a rollback, before the restored
        one)."""
        earlier = bisect.bisect_left(self.history.steps, step)
        event = self._latest.get(rule)
        return earlier > 0 and event is not None and event["last_step"] == self.history.steps[earlier - 1]

    def non_finite_update(self, step: int) -> StepDecision:
        """The update of `step` made a weight non-finite and the backend took it back: the non_finite rule's
        finding, with its action (a warning when that rule is off: the update is taken back all the same)."""
        active = next((rule for rule in self.rules if rule.rule.name == "non_finite"), None)
        finding = Finding("non_finite", step, active.action if active else "warn", True,
                          "the update made a weight non-finite; it was taken back", step, {},
                          continued=self._continues("non_finite", step))
        decision = StepDecision(step, finding.action, healthy=False, findings=[finding])
        self._limit_rollbacks(decision)
        self._record([finding])
        return decision

    def _limit_rollbacks(self, decision: StepDecision) -> None:
        if decision.action == "rollback" and len(self.rollbacks) >= self.config.max_rollbacks:
            decision.action = "stop"
            decision.reason = f"the rollback limit ({self.config.max_rollbacks}) is reached"

    def _finding(self, active: ActiveRule, step: int, verdict: Verdict) -> Finding:
        return Finding(active.rule.name, step, active.action, verdict.tripped, verdict.message, verdict.since_step,
                       {name: float(value) for name, value in verdict.values.items()},
                       continued=self._continues(active.rule.name, step))

    def kept_good_state(self, step: int) -> None:
        """The backend kept the state the run was in after `step` updates as the last good one."""
        self.last_good_step = step

    def skipped(self, step: int, reason: str) -> None:
        """A step whose update was not applied (non-finite gradients or weights)."""
        self.skipped_steps.append({"step": step, "reason": reason})

    def rolled_back(self, step: int, learning_rate: float | None) -> None:
        """The backend restored the last good state at `step`; the metrics after it are forgotten, so the rules
        judge the resumed run afresh."""
        if self.last_good_step is None:
            raise ValueError("rolled_back without a kept good state")
        self.rollbacks.append({"step": step, "restored_step": self.last_good_step, "learning_rate": learning_rate})
        self.history.truncate_after(self.last_good_step)

    def stopped(self, decision: StepDecision, checkpoint: str | None) -> None:
        """The run stops at this decision; `checkpoint` is where the last good state was saved."""
        causes = [finding for finding in decision.findings if finding.action in ("stop", "rollback")]
        self.stop = {"step": decision.step, "rules": [finding.rule for finding in causes],
                     "message": "; ".join(f"{finding.rule}: {finding.message}" for finding in causes)
                     + (f" ({decision.reason})" if decision.reason else ""),
                     "last_good_step": self.last_good_step, "checkpoint": checkpoint}

    def report(self) -> dict[str, Any]:
        """The rules in force, every finding, skipped steps, rollbacks and why the run stopped (if it did)."""
        return {"enabled": self.config.enabled, "exit_code": GUARD_EXIT_CODE if self.stop else 0,
                "stopped": self.stop, "last_good_step": self.last_good_step,
                "steps_observed": len(self.history.steps),
                "rules": [{"name": rule.rule.name, "action": rule.action, "params": rule.params}
                          for rule in self.rules],
                "findings": self.events, "skipped_steps": self.skipped_steps, "rollbacks": self.rollbacks}

    def write_report(self, folder: Path) -> Path:
        """`report()` as strict JSON in `folder` (written atomically; a NaN or infinite value is written as the
        string "nan", "inf" or "-inf", since JSON has no such numbers)."""
        path = Path(folder) / REPORT_FILE
        write_text_atomic(path, json.dumps(_json_safe(self.report()), indent=2, allow_nan=False), what="guard report")
        return path


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name, so that strict JSON parsers read the report."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
