"""The plugin system through its real mechanisms: a pip-installed example plugin found by its entry point,
the ways a plugin can fail, and the built-ins registering through the same hooks."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from plugin_distributions import write_distribution

import composer_core
from composer_core import ComposerConfig, ConfigError, PluginError
from composer_core.cli.main import main
from composer_core.objectives import Objective, ObjectiveParams, PolicyBatch, TokenLoss
from composer_core.plugins import (
    AUTOLOAD_ENV,
    HOOK_REGISTRIES,
    hookimpl,
    plugin_manager,
    plugin_sources,
    register_plugin,
    registries,
    reset_plugins,
    unregister_plugin,
)

CORE_ROOT = Path(composer_core.__file__).resolve().parents[1]
EXAMPLE_SOURCE = Path(__file__).resolve().parents[1] / "plugins" / "composer-example-objective"
BUILTIN_PLUGIN = "composer_core.objectives.builtin"
REGISTRY_HEADINGS = ("objectives", "advantage estimators", "divergences", "preference losses", "trace formats",
                     "hint providers", "guard rules", "backends")


def run_python(args: list[str], path: Path, plugins: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python <args>` in a fresh interpreter with `path` on PYTHONPATH and COMPOSER_CORE_PLUGINS as given."""
    env = {key: value for key, value in os.environ.items() if key != AUTOLOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), str(CORE_ROOT), os.environ.get("PYTHONPATH")]))
    if plugins is not None:
        env[AUTOLOAD_ENV] = plugins
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def run_ok(args: list[str], path: Path, plugins: str | None = None) -> str:
    """Like `run_python`, but the run must succeed; returns its stdout."""
    result = run_python(args, path, plugins)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- the example plugin, installed for real -------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the example plugin as pip installs it (built from a copy, so the repo stays clean)."""
    root = tmp_path_factory.mktemp("example_plugin")
    source = root / "source"
    shutil.copytree(EXAMPLE_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                             "--no-index", "--quiet", "--disable-pip-version-check", "--target", str(site),
                             str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return site


LOSS_SCRIPT = """
import sys
import torch
from composer_core import ComposerConfig, ComposerError, ComposerLoss, PolicyInputs

config_path, batch_path, out_path = sys.argv[1:]
data = torch.load(batch_path)
log_prob = data["log_prob"].clone().requires_grad_()
inputs = PolicyInputs(log_prob, data["advantages"], data["mask"], old_log_prob=data["old_log_prob"])
output = ComposerLoss(ComposerConfig.from_file(config_path))(policy=inputs)
output.loss.backward()
errors = []
for params in ({"cap": 0}, {"capp": 1.0}):
    try:
        ComposerConfig.from_mapping({"policy": {"objective": {"name": "tis_reinforce", "params": params}}})
    except ComposerError as error:
        errors.append(str(error))
torch.save({"loss": output.loss.detach(), "grad": log_prob.grad, "metrics": output.metrics, "errors": errors},
           out_path)
"""

PROBE_SCRIPT = """
from composer_core import ComposerConfig, ComposerError
try:
    ComposerConfig.from_mapping({"policy": {"objective": {"name": "tis_reinforce"}}})
except ComposerError as error:
    print(f"{type(error).__name__}: {error}")
else:
    print("loaded")
"""


def random_policy_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Ragged float64 log-probs, a stale behaviour policy and per-sequence advantages."""
    generator = torch.Generator().manual_seed(seed)
    log_prob = -3 * torch.rand(4, 6, generator=generator, dtype=torch.float64)
    old_log_prob = log_prob + 0.8 * torch.randn(4, 6, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 5, 1])
    mask = torch.arange(6) < lengths.unsqueeze(-1)
    return {"log_prob": log_prob, "old_log_prob": old_log_prob, "mask": mask,
            "advantages": torch.randn(4, generator=generator, dtype=torch.float64)}


def tis_reference(batch: dict[str, torch.Tensor], cap: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The token mean of `-min(r, cap) A log pi`, its gradient in log pi (r held fixed), the truncated share."""
    mask = batch["mask"]
    ratio = torch.exp(batch["log_prob"] - batch["old_log_prob"])
    weight = torch.clamp(ratio, max=cap)
    advantages = batch["advantages"][:, None]
    tokens = mask.sum()
    loss = (-weight * advantages * batch["log_prob"])[mask].sum() / tokens
    grad = torch.where(mask, -weight * advantages / tokens, torch.zeros_like(weight))
    return loss, grad, float((ratio > cap)[mask].float().mean())


def test_installed_plugin_objective_computes_its_formula(example_site: Path, tmp_path: Path) -> None:
    cap = 1.5
    batch = random_policy_batch()
    expected_loss, expected_grad, truncated = tis_reference(batch, cap)
    assert 0 < truncated < 1, "the batch must have truncated and untruncated tokens"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"policy": {"objective": {"name": "tis_reinforce", "params": {"cap": cap}}}}))
    torch.save(batch, tmp_path / "batch.pt")
    out = tmp_path / "out.pt"
    run_ok(["-c", LOSS_SCRIPT, str(config), str(tmp_path / "batch.pt"), str(out)], example_site)
    result = torch.load(out)
    torch.testing.assert_close(result["loss"], expected_loss)
    torch.testing.assert_close(result["grad"], expected_grad)
    assert result["metrics"]["policy/truncfrac"] == pytest.approx(truncated)
    cap_error, key_error = result["errors"]
    assert "invalid params for objective 'tis_reinforce'" in cap_error and "cap" in cap_error
    assert "invalid params for objective 'tis_reinforce'" in key_error and "capp" in key_error


def test_cli_lists_installed_plugin_and_its_distribution(example_site: Path) -> None:
    listing = json.loads(run_ok(["-m", "composer_core.cli", "plugins", "--json"], example_site))
    objective = {entry["name"]: entry for entry in listing["registries"]["objectives"]}["tis_reinforce"]
    assert objective["plugin"] == "example_objective"
    assert "composer-example-objective" in objective["source"]
    assert "truncated" in objective["description"]
    assert "composer-example-objective" in listing["plugins"]["example_objective"]


@pytest.mark.parametrize(("setting", "expected"), [
    ("none", r"^ConfigError: .*unknown objective 'tis_reinforce'; registered: [^.]*\bgrpo\b"),
    ("example_objective", r"^loaded$"),
], ids=["none", "example_objective"])
def test_autoload_setting_selects_plugins(example_site: Path, setting: str, expected: str) -> None:
    assert re.search(expected, run_ok(["-c", PROBE_SCRIPT], example_site, plugins=setting), re.MULTILINE)


def test_autoload_setting_naming_a_missing_plugin_fails_clearly(example_site: Path) -> None:
    result = run_python(["-m", "composer_core.cli", "plugins"], example_site, plugins="example_objective,nope")
    assert result.returncode == 2
    assert f"{AUTOLOAD_ENV} names plugins that are not installed: ['nope']" in result.stderr
    assert "example_objective" in result.stderr


# --- failure modes ---------------------------------------------------------------------------------------------


def test_plugin_that_fails_to_import_is_named_with_its_distribution(tmp_path: Path) -> None:
    write_distribution(tmp_path, "import a_module_that_is_not_installed\n")
    result = run_python(["-m", "composer_core.cli", "plugins"], tmp_path)
    assert result.returncode == 2
    assert "plugin 'broken' (entry point broken = broken_plugin (broken-plugin 1.0)) failed to import" in result.stderr
    assert "ModuleNotFoundError" in result.stderr and AUTOLOAD_ENV in result.stderr
    assert "Traceback" not in result.stderr
    assert "broken" not in run_ok(["-m", "composer_core.cli", "plugins"], tmp_path, plugins="none")


@pytest.fixture
def builtins_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Process-wide plugins rebuilt from the built-ins alone, and forgotten again after the test."""
    monkeypatch.setenv(AUTOLOAD_ENV, "none")
    reset_plugins()
    yield
    reset_plugins()


def plain_reinforce(batch: PolicyBatch, params: ObjectiveParams) -> TokenLoss:
    """`-A log pi`."""
    return TokenLoss(-batch.advantages * batch.log_prob)


def make_objective(name: str) -> Objective:
    """A settings-free objective for run-time registration."""
    return Objective(name, plain_reinforce, ObjectiveParams, "token-mean", "grpo", "test objective")


class ObjectivesPlugin:
    """A run-time plugin that registers the objectives it is given."""

    def __init__(self, *objectives: Objective) -> None:
        self.objectives = objectives

    @hookimpl
    def register_objectives(self, register: Callable[[Objective], None]) -> None:
        for objective in self.objectives:
            register(objective)


class MisspeltHookPlugin:
    """A plugin whose only hook has a name composer-core does not define."""

    @hookimpl
    def register_objectivs(self, register: Callable[[Objective], None]) -> None:
        """Never called."""


def test_misspelt_hook_is_an_error_listing_the_known_hooks(builtins_only: None) -> None:
    with pytest.raises(PluginError, match="plugin 'typo_plugin' implements a hook") as caught:
        register_plugin(MisspeltHookPlugin(), "typo_plugin")
    assert "register_objectivs" in str(caught.value)
    assert all(hook in str(caught.value) for hook in HOOK_REGISTRIES)
    assert plugin_manager().get_plugin("typo_plugin") is None


def test_name_taken_by_a_builtin_is_an_error_naming_both_plugins(builtins_only: None) -> None:
    with pytest.raises(PluginError, match="objective 'grpo' is registered twice") as caught:
        register_plugin(ObjectivesPlugin(make_objective("grpo")), "shadow_plugin")
    assert f"plugin {BUILTIN_PLUGIN!r}" in str(caught.value) and "plugin 'shadow_plugin'" in str(caught.value)
    assert registries().objectives.entry("grpo").plugin == BUILTIN_PLUGIN
    assert plugin_manager().get_plugin("shadow_plugin") is None


class WrongArgumentPlugin:
    """A plugin whose hook takes an argument the hook does not pass."""

    @hookimpl
    def register_objectives(self, add: Callable[[Objective], None]) -> None:
        """Never called."""


def test_hook_with_wrong_arguments_is_a_plugin_error(builtins_only: None) -> None:
    with pytest.raises(PluginError, match="plugin 'bad_args' is invalid.*exactly the argument `register`"):
        register_plugin(WrongArgumentPlugin(), "bad_args")
    assert plugin_manager().get_plugin("bad_args") is None


def test_plugin_name_already_taken_is_a_plugin_error(builtins_only: None) -> None:
    with pytest.raises(PluginError, match=f"a plugin named {BUILTIN_PLUGIN!r} is already registered"):
        register_plugin(ObjectivesPlugin(), BUILTIN_PLUGIN)


def test_run_time_plugin_is_usable_by_name_then_removable(builtins_only: None) -> None:
    config = {"policy": {"objective": {"name": "unit_reinforce"}}}
    register_plugin(ObjectivesPlugin(make_objective("unit_reinforce")), "unit_plugin")
    entry = registries().objectives.entry("unit_reinforce")
    assert (entry.plugin, entry.source) == ("unit_plugin", "registered at run time")
    assert ComposerConfig.from_mapping(config).policy.objective.resolve().objective is entry.item
    unregister_plugin("unit_plugin")
    assert "unit_reinforce" not in registries().objectives and "unit_plugin" not in plugin_sources()
    with pytest.raises(ConfigError, match="unknown objective 'unit_reinforce'"):
        ComposerConfig.from_mapping(config)


# --- built-ins ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("hook", "module"), [
    ("register_objectives", BUILTIN_PLUGIN),
    ("register_advantage_estimators", "composer_core.objectives.advantages"),
    ("register_divergences", "composer_core.distill"),
    ("register_preference_losses", "composer_core.preference"),
])
def test_builtins_register_through_the_public_hooks(builtins_only: None, hook: str, module: str) -> None:
    impls = getattr(plugin_manager().hook, hook).get_hookimpls()
    assert importlib.import_module(module) in [impl.plugin for impl in impls]
    registry = getattr(registries(), HOOK_REGISTRIES[hook])
    assert registry.names() and {entry.source for entry in registry} == {"built-in"}


def test_cli_text_lists_every_registry_kind(builtins_only: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for heading, registry in zip(REGISTRY_HEADINGS, registries().all().values(), strict=True):
        assert f"\n{heading}:\n" in out
        assert all(re.search(rf"^  {name} +composer_core\.", out, re.MULTILINE) for name in registry.names())


# --- hostile plugins and settings, through real installed distributions -----------------------------------------

RAISING_HOOK = """
from composer_core.plugins import hookimpl


@hookimpl
def register_objectives(register):
    raise RuntimeError("the plugin's own bug")
"""

OBJECTIVE_PLUGIN = """
from composer_core.objectives import Objective, ObjectiveParams, TokenLoss
from composer_core.plugins import hookimpl


def plain_reinforce(batch, params):
    return TokenLoss(-batch.advantages * batch.log_prob)


@hookimpl
def register_objectives(register):
    register(Objective({name!r}, plain_reinforce, ObjectiveParams, "token-mean", "grpo", "test objective"))
"""


def objective_plugin(name: str) -> str:
    """The source of a plugin module that registers one objective called `name`."""
    return OBJECTIVE_PLUGIN.format(name=name)


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path whose distributions this process loads as installed plugins (COMPOSER_CORE_PLUGINS
    unset); the plugins are reloaded before and after the test, and the folder's modules forgotten."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_plugins()
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    reset_plugins()


def test_hook_that_raises_names_the_plugin_its_hook_and_distribution(site: Path) -> None:
    write_distribution(site, RAISING_HOOK, "hookfail")
    with pytest.raises(PluginError) as caught:
        registries()
    assert str(caught.value).startswith("plugin 'hookfail' (entry point hookfail = hookfail_plugin (hookfail-plugin "
                                        "1.0)) failed in its hook register_objectives: RuntimeError: the plugin's "
                                        "own bug")
    assert AUTOLOAD_ENV in str(caught.value)


class RaisingPlugin:
    """A run-time plugin whose divergence hook raises the error it is given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    @hookimpl
    def register_divergences(self, register: Callable[[object], None]) -> None:
        raise self.error


@pytest.mark.parametrize("error", [KeyError("missing"), ConfigError("its own config"), PluginError("its own")],
                         ids=["KeyError", "ConfigError", "PluginError"])
def test_run_time_plugin_whose_hook_raises_is_named_and_removed(builtins_only: None, error: Exception) -> None:
    with pytest.raises(PluginError, match="plugin 'raiser' \\(registered at run time\\) failed in its hook "
                                          f"register_divergences: {type(error).__name__}"):
        register_plugin(RaisingPlugin(error), "raiser")
    assert plugin_manager().get_plugin("raiser") is None
    assert "generalized_jsd" in registries().divergences


@pytest.mark.parametrize("setting", ["", "  ", ",", " , "])
def test_empty_autoload_setting_is_an_error_not_every_plugin_off(site: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 setting: str) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, setting)
    with pytest.raises(PluginError, match=f"{AUTOLOAD_ENV} is set but names no plugin .*unset it .*'none'"):
        registries()


def test_autoload_setting_mixing_none_with_names_is_an_error(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_distribution(site, objective_plugin("mixed_objective"), "mixed")
    monkeypatch.setenv(AUTOLOAD_ENV, "none,mixed")
    with pytest.raises(PluginError, match="mixes 'none' with plugin names"):
        registries()


@pytest.mark.parametrize(("setting", "third_party_loaded", "backends_loaded"), [
    (None, True, True), ("keep", True, True), ("trl", False, True), ("none", False, False),
])
def test_autoload_setting_selects_third_party_plugins_and_keeps_the_backends(
        site: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, third_party_loaded: bool,
        backends_loaded: bool) -> None:
    write_distribution(site, objective_plugin("kept_objective"), "keep")
    if setting is not None:
        monkeypatch.setenv(AUTOLOAD_ENV, setting)
    assert ("kept_objective" in registries().objectives) is third_party_loaded
    assert ({"trl", "verl"} <= set(registries().backends.names())) is backends_loaded
    if backends_loaded:
        assert "composer-core" in registries().backends.entry("trl").source


def test_two_plugins_registering_one_name_fail_naming_both_and_the_way_out(site: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for plugin in ("first", "second"):
        write_distribution(site, objective_plugin("twin_objective"), plugin)
    with pytest.raises(PluginError, match="objective 'twin_objective' is registered twice") as caught:
        registries()
    message = str(caught.value)
    for plugin, other in (("first", "second"), ("second", "first")):
        assert f"plugin {plugin!r} (entry point {plugin} = {plugin}_plugin ({plugin}-plugin 1.0))" in message
        assert f"{AUTOLOAD_ENV}={other} leaves out {plugin!r}" in message
    monkeypatch.setenv(AUTOLOAD_ENV, "first")
    reset_plugins()
    assert registries().objectives.entry("twin_objective").plugin == "first"


def test_plugin_taking_a_builtin_name_is_told_how_to_leave_it_out(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_distribution(site, objective_plugin("grpo"), "shadow")
    with pytest.raises(PluginError, match=f"plugin {BUILTIN_PLUGIN!r} \\(built-in\\) and by plugin 'shadow'") as caught:
        registries()
    advice = re.search(f"{AUTOLOAD_ENV}=(\\S+) leaves out 'shadow'", str(caught.value))
    assert advice is not None, str(caught.value)
    monkeypatch.setenv(AUTOLOAD_ENV, advice.group(1))
    reset_plugins()
    assert registries().objectives.entry("grpo").plugin == BUILTIN_PLUGIN
    assert {"trl", "verl"} <= set(registries().backends.names())


def test_two_distributions_declaring_one_plugin_name_are_both_named(site: Path) -> None:
    write_distribution(site, objective_plugin("same_objective"), "same")
    other = site / "other_distribution-2.0.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: other-distribution\nVersion: 2.0\n")
    (other / "entry_points.txt").write_text("[composer_core]\nsame = same_plugin\n")
    with pytest.raises(PluginError, match="two installed distributions declare the plugin 'same'.*uninstall one") \
            as caught:
        registries()
    assert "(same-plugin 1.0)" in str(caught.value) and "(other-distribution 2.0)" in str(caught.value)


def test_cli_plugins_lists_the_plugins_next_to_a_conflict(tmp_path: Path) -> None:
    for plugin in ("first", "second"):
        write_distribution(tmp_path, objective_plugin("twin_objective"), plugin)
    result = run_python(["-m", "composer_core.cli", "plugins"], tmp_path)
    assert result.returncode == 2
    assert "composer-core: error: objective 'twin_objective' is registered twice" in result.stderr
    assert "Traceback" not in result.stderr
    for plugin in ("first", "second"):
        assert f"  {plugin}  (entry point {plugin} = {plugin}_plugin ({plugin}-plugin 1.0))" in result.stdout


def test_cli_plugins_json_and_config_report_a_conflict(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for plugin in ("first", "second"):
        write_distribution(site, objective_plugin("twin_objective"), plugin)
    assert main(["plugins", "--json"]) == 2
    captured = capsys.readouterr()
    listing = json.loads(captured.out)
    assert {"first", "second"} <= set(listing["plugins"]) and listing["registries"] is None
    assert "registered twice" in listing["error"] and "registered twice" in captured.err
    assert main(["config"]) == 2
    assert "composer-core: error: objective 'twin_objective' is registered twice" in capsys.readouterr().err


README_PLUGIN = next(block for block in re.findall(r"```python\n(.*?)```", (CORE_ROOT / "README.md").read_text(),
                                                   re.S) if "@hookimpl" in block)
README_ENTRY_POINT = re.search(r"\[project\.entry-points\.composer_core\]\n(\w+) =",
                               (CORE_ROOT / "README.md").read_text()).group(1)  # type: ignore[union-attr]


def test_readme_plugin_installs_next_to_the_example_plugin(site: Path, example_site: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(example_site))
    write_distribution(site, README_PLUGIN, README_ENTRY_POINT)
    plugins = {entry.plugin for entry in registries().objectives}  # raises on a name both plugins register
    assert {"example_objective", README_ENTRY_POINT} <= plugins
