"""The `guard:` section of the experiment config, from mappings and YAML files, and guard rules added by a plugin
through the public hook: configurable like the built-ins, refused loudly on a duplicate name, listed by the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composer_core import ComposerConfig, ConfigError, PluginError
from composer_core.cli.main import main
from composer_core.guard import ACTIONS, BUILTIN_RULES, Guard, GuardConfig, GuardRule, MetricHistory, Verdict
from composer_core.guard.rules import Params, from_streak, streak
from composer_core.plugins import (
    AUTOLOAD_ENV,
    hookimpl,
    plugin_manager,
    register_plugin,
    registries,
    reset_plugins,
    unregister_plugin,
)

BUILTIN_PLUGIN = "composer_core.guard.rules"
BUILTIN_NAMES = sorted(rule.name for rule in BUILTIN_RULES)


def guard_of(data: dict[str, Any]) -> Guard:
    """The guard a config mapping's `guard:` section builds."""
    return Guard(ComposerConfig.from_mapping(data).guard)


def from_yaml(tmp_path: Path, text: str) -> ComposerConfig:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return ComposerConfig.from_file(path)


def active(guard: Guard) -> dict[str, tuple[str, dict[str, float]]]:
    return {rule.rule.name: (rule.action, rule.params) for rule in guard.rules}


def test_a_guard_section_sets_actions_and_thresholds_over_the_defaults(tmp_path: Path) -> None:
    config = from_yaml(tmp_path, """
guard:
  max_rollbacks: 1
  rules:
    reward_collapse: {action: rollback, patience: 20}
    grad_norm_spike: {factor: 4.5}
""")
    rules = active(Guard(config.guard))
    assert rules["reward_collapse"] == ("rollback", {"fraction": 0.5, "min_drop": 0.15, "noise_z": 3.0,
                                                     "patience": 20.0, "smooth": 5, "min_peak": 0.05})
    assert rules["grad_norm_spike"] == ("warn", {"factor": 4.5, "window": 20, "min_steps": 5})
    assert config.guard.max_rollbacks == 1
    assert ComposerConfig.from_mapping(config.model_dump()) == config  # what is shown loads back the same


def test_an_unknown_rule_is_refused_as_the_config_loads_listing_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"guard\.rules names \['reward_colapse'\], which no plugin registered") as \
            caught:
        ComposerConfig.from_mapping({"guard": {"rules": {"reward_colapse": {"patience": 3}}}})
    assert f"registered guard rules: {', '.join(BUILTIN_NAMES)}" in str(caught.value)


def test_an_unknown_threshold_is_refused_listing_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match=r"guard\.rules\.reward_collapse has no setting \['patiense'\]; it takes: "
                                          "action, fraction, min_drop, noise_z, patience, smooth, min_peak"):
        guard_of({"guard": {"rules": {"reward_collapse": {"patiense": 3}}}})
    with pytest.raises(ConfigError, match=r"non_finite has no setting \['limit'\]; it takes: action, \(no thresholds"):
        guard_of({"guard": {"rules": {"non_finite": {"limit": 3}}}})


@pytest.mark.parametrize("value", ["ten", True, None, [3], {"value": 3}])
def test_a_threshold_that_is_not_a_number_is_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"guard\.rules\.all_truncated\.patience must be a finite number, got "
                                          rf"{value!r}".replace("[", r"\[").replace("{", r"\{")):
        guard_of({"guard": {"rules": {"all_truncated": {"patience": value}}}})


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_a_non_finite_threshold_from_yaml_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"divergence_blowup\.limit must be a finite number, got (nan|inf|-inf)"):
        from_yaml(tmp_path, f"guard:\n  rules:\n    divergence_blowup: {{limit: {text}}}\n")


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_is_accepted(action: str) -> None:
    guard = guard_of({"guard": {"rules": {"entropy_collapse": {"action": action}}}})
    assert active(guard).get("entropy_collapse", ("off",))[0] == action


@pytest.mark.parametrize("written", ["off", '"off"', "'off'", "false"])
def test_yaml_off_unquoted_or_quoted_turns_a_rule_off(tmp_path: Path, written: str) -> None:
    """YAML 1.1 reads an unquoted `off` as false: it must still mean the action "off", not be an error."""
    config = from_yaml(tmp_path, f"guard:\n  rules:\n    non_finite: {{action: {written}}}\n")
    assert config.guard.rules == {"non_finite": {"action": "off"}}
    guard = Guard(config.guard)
    assert "non_finite" not in active(guard) and len(guard.rules) == len(BUILTIN_RULES) - 1
    assert guard.observe(1, {"loss": math.nan}).action == "none"


@pytest.mark.parametrize(("written", "shown"), [("kill", "'kill'"), ("on", "True"), ("Stop", "'Stop'"),
                                                ("[stop]", r"\['stop'\]")])
def test_a_bad_action_is_refused_listing_the_actions(tmp_path: Path, written: str, shown: str) -> None:
    with pytest.raises(ConfigError, match=rf"job\.yaml is invalid: .*guard\.rules\.non_finite\.action is {shown}; "
                                          r"use one of off, warn, stop, rollback"):
        from_yaml(tmp_path, f"guard:\n  rules:\n    non_finite: {{action: {written}}}\n")


@pytest.mark.parametrize(("written", "shown"), [("off", "False"), ("3", "3"), ("[patience, 3]", r"\['patience', 3\]")])
def test_rule_settings_that_are_not_a_mapping_are_refused(tmp_path: Path, written: str, shown: str) -> None:
    with pytest.raises(ConfigError, match=rf"guard\.rules\.reward_collapse must be a mapping of `action` and "
                                          rf"thresholds, got {shown}"):
        from_yaml(tmp_path, f"guard:\n  rules:\n    reward_collapse: {written}\n")


@pytest.mark.parametrize(("section", "field"), [
    ({"rules": ["reward_collapse"]}, "guard.rules"),
    ({"max_rollbacks": -1}, "guard.max_rollbacks"),
    ({"rollback_lr_factor": 0.0}, "guard.rollback_lr_factor"),
    ({"rollback_lr_factor": 1.5}, "guard.rollback_lr_factor"),
    ({"snapshot_every": 0}, "guard.snapshot_every"),
    ({"enable": False}, "guard.enable"),
], ids=["rules-list", "max_rollbacks", "lr-factor-0", "lr-factor-above-1", "snapshot_every", "misspelt-key"])
def test_invalid_guard_settings_name_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"config is invalid: {field.replace('.', r'[.]')}"):
        ComposerConfig.from_mapping({"guard": section})


def test_enabled_false_in_yaml_gives_no_rules(tmp_path: Path) -> None:
    config = from_yaml(tmp_path, "guard:\n  enabled: false\n")
    assert config.guard.enabled is False and Guard(config.guard).rules == []
    assert len(Guard(ComposerConfig().guard).rules) == len(BUILTIN_RULES)  # on by default


# --- a rule from a plugin ---------------------------------------------------------------------------------------------

def check_loss_ceiling(history: MetricHistory, params: Params) -> Verdict | None:
    """Fires once the loss has stayed above `ceiling` for `patience` steps."""
    length, since = streak(history, "loss", lambda values, index: values[index] > params["ceiling"])
    return from_streak(length, since, params["patience"], f"loss above {params['ceiling']:g}", {})


LOSS_CEILING = GuardRule("loss_ceiling", "the loss stays above a ceiling", check_loss_ceiling,
                         {"ceiling": 10.0, "patience": 2}, {"ceiling": "a loss above it is too high",
                                                             "patience": "consecutive steps"}, "stop", ("loss",))


class GuardRulesPlugin:
    """A run-time plugin that registers the guard rules it is given."""

    def __init__(self, *rules: GuardRule) -> None:
        self.rules = rules

    @hookimpl
    def register_guard_rules(self, register: Callable[[GuardRule], None]) -> None:
        for rule in self.rules:
            register(rule)


@pytest.fixture
def builtins_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Process-wide plugins rebuilt from the built-ins alone, and forgotten again after the test."""
    monkeypatch.setenv(AUTOLOAD_ENV, "none")
    reset_plugins()
    yield
    reset_plugins()


def fire_step(guard: Guard, losses: list[float]) -> int | None:
    for step, loss in enumerate(losses, 1):
        if guard.observe(step, {"loss": loss}).action == "stop":
            return step
    return None


def test_a_plugin_rule_runs_in_the_guard_with_configurable_thresholds(builtins_only: None) -> None:
    register_plugin(GuardRulesPlugin(LOSS_CEILING), "unit_guard_plugin")
    entry = registries().guard_rules.entry("loss_ceiling")
    assert (entry.plugin, entry.source) == ("unit_guard_plugin", "registered at run time")
    losses = [1.0, 20.0, 20.0, 8.0, 8.0, 8.0]
    default = Guard(GuardConfig())
    assert active(default)["loss_ceiling"] == ("stop", {"ceiling": 10.0, "patience": 2})
    assert fire_step(default, losses) == 3
    configured = guard_of({"guard": {"rules": {"loss_ceiling": {"ceiling": 5, "patience": 4}}}})
    assert fire_step(configured, losses) == 5
    assert fire_step(guard_of({"guard": {"rules": {"loss_ceiling": {"action": "off"}}}}), losses) is None
    with pytest.raises(ConfigError, match=r"loss_ceiling has no setting \['factor'\]; it takes: action, ceiling, "
                                          "patience"):
        guard_of({"guard": {"rules": {"loss_ceiling": {"factor": 2}}}})


def test_a_plugin_rule_is_gone_once_its_plugin_is(builtins_only: None) -> None:
    register_plugin(GuardRulesPlugin(LOSS_CEILING), "unit_guard_plugin")
    assert "loss_ceiling" in registries().guard_rules
    unregister_plugin("unit_guard_plugin")
    with pytest.raises(ConfigError, match=r"names \['loss_ceiling'\], which no plugin registered"):
        guard_of({"guard": {"rules": {"loss_ceiling": {"ceiling": 5}}}})


def test_a_plugin_rule_with_a_builtin_name_fails_naming_both_plugins(builtins_only: None) -> None:
    shadow = GuardRule("reward_collapse", "a second reward rule", check_loss_ceiling, {}, {}, "warn", ())
    with pytest.raises(PluginError, match="guard rule 'reward_collapse' is registered twice") as caught:
        register_plugin(GuardRulesPlugin(shadow), "shadow_guard")
    assert f"plugin {BUILTIN_PLUGIN!r}" in str(caught.value) and "plugin 'shadow_guard'" in str(caught.value)
    assert plugin_manager().get_plugin("shadow_guard") is None
    assert registries().guard_rules.entry("reward_collapse").plugin == BUILTIN_PLUGIN


def test_two_plugins_registering_one_rule_name_fail_naming_both(builtins_only: None) -> None:
    register_plugin(GuardRulesPlugin(LOSS_CEILING), "first_guard")
    with pytest.raises(PluginError, match="guard rule 'loss_ceiling' is registered twice: by plugin 'first_guard'"
                                          r" \(registered at run time\) and by plugin 'second_guard'"):
        register_plugin(GuardRulesPlugin(LOSS_CEILING), "second_guard")
    assert registries().guard_rules.entry("loss_ceiling").plugin == "first_guard"


def test_a_rule_definition_without_described_parameters_or_with_a_bad_action_is_refused() -> None:
    with pytest.raises(ValueError, match="'half_documented': every parameter needs a default and a description"):
        GuardRule("half_documented", "", check_loss_ceiling, {"ceiling": 1.0}, {}, "warn", ())
    with pytest.raises(ValueError, match=r"'loud': action 'panic' is not one of"):
        GuardRule("loud", "", check_loss_ceiling, {}, {}, "panic", ())  # type: ignore[arg-type]


def test_cli_plugins_json_lists_the_guard_rules(builtins_only: None, capsys: pytest.CaptureFixture[str]) -> None:
    register_plugin(GuardRulesPlugin(LOSS_CEILING), "unit_guard_plugin")
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)["registries"]["guard_rules"]
    by_name = {entry["name"]: entry for entry in listing}
    assert sorted(by_name) == sorted([*BUILTIN_NAMES, "loss_ceiling"])
    assert {by_name[name]["plugin"] for name in BUILTIN_NAMES} == {BUILTIN_PLUGIN}
    assert by_name["reward_collapse"]["description"] == next(
        rule.description for rule in BUILTIN_RULES if rule.name == "reward_collapse")
    assert (by_name["loss_ceiling"]["plugin"], by_name["loss_ceiling"]["source"]) == ("unit_guard_plugin",
                                                                                     "registered at run time")
