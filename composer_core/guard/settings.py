"""The `guard:` section of the experiment config: which rules act how, and how rollbacks behave."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from composer_core.guard.rules import ACTIONS
from composer_core.strict_model import StrictModel


class GuardConfig(StrictModel):
    """Every registered rule runs with its default action and thresholds unless `rules` says otherwise, e.g.
    `rules: {reward_collapse: {action: rollback, patience: 20}, entropy_collapse: {action: "off"}}`."""

    enabled: bool = Field(True, description="false: no rule runs (the backend's own checks remain)")
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per rule: `action` (off, warn, stop, "
                                             "rollback) and its thresholds; see docs/guard.md")
    max_rollbacks: int = Field(2, ge=0, description="rollbacks before a rollback rule stops the run instead")
    rollback_lr_factor: float = Field(0.5, gt=0.0, le=1.0, description="the learning rate is multiplied by it on "
                                      "every rollback")
    snapshot_every: int = Field(1, ge=1, description="keep the last good state in memory every N healthy steps (the "
                                "state a stop saves and a rollback restores)")

    @field_validator("rules", mode="before")  # before pydantic's own type check, so that the message is ours
    @classmethod
    def _actions(cls, rules: Any) -> Any:
        if not isinstance(rules, dict):
            return rules  # pydantic says what a mapping of rules should be
        checked = {}
        for name, settings in rules.items():
            if not isinstance(settings, dict):
                raise ValueError(f"guard.rules.{name} must be a mapping of `action` and thresholds, got "
                                 f"{settings!r}")
            settings = dict(settings)
            if settings.get("action") is False:  # YAML 1.1 reads an unquoted `off` as false
                settings["action"] = "off"
            if "action" in settings and settings["action"] not in ACTIONS:
                raise ValueError(f"guard.rules.{name}.action is {settings['action']!r}; use one of "
                                 f"{', '.join(ACTIONS)}")
            checked[name] = settings
        return checked
