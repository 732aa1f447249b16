"""The training guard: rules over the metric stream every backend produces, and the actions they call for
(warn, stop with the last good checkpoint, roll back with a lower learning rate). See docs/guard.md."""

from composer_core.guard.metrics import GUARD_METRICS, MetricHistory
from composer_core.guard.monitor import GUARD_EXIT_CODE, REPORT_FILE, Finding, Guard, StepDecision, active_rules
from composer_core.guard.rules import ACTIONS, BUILTIN_RULES, GuardRule, Verdict
from composer_core.guard.settings import GuardConfig

__all__ = ["ACTIONS", "BUILTIN_RULES", "GUARD_EXIT_CODE", "GUARD_METRICS", "REPORT_FILE", "Finding", "Guard",
           "GuardConfig", "GuardRule", "MetricHistory", "StepDecision", "Verdict", "active_rules"]
