"""The plugin system: pluggy hookspecs with a `register` callback, registries, entry-point loading.

Built-in objectives, estimators, divergences and preference losses register through the same hooks as
third-party plugins. Plugins are found through the `composer_core` entry-point group; composer-core's own
entry points (the `trl` and `verl` backends) are part of the project, the others are third-party plugins.
`COMPOSER_CORE_PLUGINS` selects the third-party plugins: unset loads all, `a,b` loads only `a` and `b` (the
project's own backends stay), `none` loads no entry point at all (not even the backends); set but empty is an
error, so that a typo in a shell script cannot silently disable every plugin.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pluggy

from composer_core.errors import PluginError, UnknownNameError

PROJECT = "composer_core"
ENTRY_POINT_GROUP = "composer_core"
AUTOLOAD_ENV = "COMPOSER_CORE_PLUGINS"
DISTRIBUTION = "composer-core"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

T = TypeVar("T")
Register = Callable[..., None]


class HookSpecs:
    """Each hook receives a `register(name, item)` callback; call it once per thing the plugin adds."""

    @hookspec
    def register_objectives(self, register: Register) -> None:
        """Register channel-1 objectives: `register(Objective(...))`."""

    @hookspec
    def register_advantage_estimators(self, register: Register) -> None:
        """Register advantage estimators: `register(AdvantageEstimator(...))`."""

    @hookspec
    def register_divergences(self, register: Register) -> None:
        """Register channel-2 pointwise divergences: `register(Divergence(...))`."""

    @hookspec
    def register_preference_losses(self, register: Register) -> None:
        """Register channel-3 preference losses: `register(PreferenceLoss(...))`."""

    @hookspec
    def register_trace_formats(self, register: Register) -> None:
        """Register agent-trace ingesters: `register(TraceFormat(...))`."""

    @hookspec
    def register_hint_providers(self, register: Register) -> None:
        """Register hint providers for self-distillation targets: `register(HintProvider(...))`."""

    @hookspec
    def register_guard_rules(self, register: Register) -> None:
        """Register training-guard rules: `register(GuardRule(...))` (composer_core.guard)."""

    @hookspec
    def register_backends(self, register: Register) -> None:
        """Register training backends: `register(Backend(...))`."""


@dataclass(frozen=True)
class Registered(Generic[T]):
    """One registered item and the plugin that registered it."""

    name: str
    item: T
    plugin: str
    source: str


class RegistrationError(PluginError):
    """A plugin's `register` call was refused (a duplicate or missing name); the message names the plugin."""


class NameConflictError(RegistrationError):
    """Two plugins registered one name; `plugins` holds both plugin names, the first registrant first."""

    def __init__(self, message: str, plugins: tuple[str, str]) -> None:
        super().__init__(message)
        self.plugins = plugins


class Registry(Generic[T]):
    """Names to items of one kind; a duplicate name fails naming both plugins."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registered[T]] = {}

    def add(self, name: str, item: T, *, plugin: str, source: str) -> None:
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"plugin {plugin!r} ({source}) registered a {self.kind} without a name")
        if name in self._entries:
            first = self._entries[name]
            raise NameConflictError(f"{self.kind} {name!r} is registered twice: by plugin {first.plugin!r} "
                                    f"({first.source}) and by plugin {plugin!r} ({source}); uninstall or rename one "
                                    f"of them, or leave one out with {AUTOLOAD_ENV}", (first.plugin, plugin))
        self._entries[name] = Registered(name, item, plugin, source)

    def get(self, name: str) -> T:
        return self.entry(name).item

    def entry(self, name: str) -> Registered[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}. A plugin's name must be "
                                   f"installed and loaded (see `composer-core plugins`)") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Registered[T]]:
        return iter(self._entries.values())


@dataclass(frozen=True)
class Registries:
    """All registries, filled by one pass over every plugin's hooks."""

    objectives: Registry[Any]
    advantage_estimators: Registry[Any]
    divergences: Registry[Any]
    preference_losses: Registry[Any]
    trace_formats: Registry[Any]
    hint_providers: Registry[Any]
    guard_rules: Registry[Any]
    backends: Registry[Any]

    def all(self) -> dict[str, Registry[Any]]:
        return {attribute: getattr(self, attribute) for attribute in HOOK_REGISTRIES.values()}


BUILTIN_MODULES = (
    "composer_core.objectives.builtin",
    "composer_core.objectives.advantages",
    "composer_core.distill",
    "composer_core.preference",
    "composer_core.traces.openai_messages",
    "composer_core.traces.claude_code",
    "composer_core.traces.codex",
    "composer_core.traces.gemini_cli",
    "composer_core.traces.aider",
    "composer_core.traces.cline",
    "composer_core.traces.swe_agent",
    "composer_core.traces.mini_swe_agent",
    "composer_core.traces.openhands",
    "composer_core.traces.hints",
    "composer_core.guard.rules",
)


def _distribution(point: importlib.metadata.EntryPoint) -> str | None:
    """The normalised name of the distribution that declares `point` (None when unknown)."""
    return None if point.dist is None else point.dist.metadata["Name"].lower().replace("_", "-")


def _is_own(point: importlib.metadata.EntryPoint) -> bool:
    """Whether `point` is one of composer-core's own entry points (its backends), not a third-party plugin."""
    return _distribution(point) == DISTRIBUTION


def _installed_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Every entry point of the group; two distributions declaring one plugin name is an error naming both."""
    points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    by_name: dict[str, importlib.metadata.EntryPoint] = {}
    for point in points:
        other = by_name.setdefault(point.name, point)
        if other is not point:
            raise PluginError(f"two installed distributions declare the plugin {point.name!r}: "
                              f"{_entry_point_source(other)} and {_entry_point_source(point)}; uninstall one")
    return points


def _wanted_names(setting: str, installed: list[str]) -> set[str]:
    """The names in COMPOSER_CORE_PLUGINS; an empty setting, or `none` mixed with names, is an error."""
    wanted = {name.strip() for name in setting.split(",") if name.strip()}
    if not wanted:
        raise PluginError(f"{AUTOLOAD_ENV} is set but names no plugin ({setting!r}): unset it to load every installed "
                          f"plugin, set it to 'none' to load no entry point (not even the own backends), or name "
                          f"the plugins to load, comma-separated (installed: {installed or 'none'})")
    if "none" in wanted and wanted != {"none"}:
        raise PluginError(f"{AUTOLOAD_ENV}={setting!r} mixes 'none' with plugin names: give either 'none' or the "
                          "names of the plugins to load")
    return wanted


def _selected_entry_points() -> list[importlib.metadata.EntryPoint]:
    """composer-core's own entry points and the third-party plugins COMPOSER_CORE_PLUGINS selects."""
    setting = os.environ.get(AUTOLOAD_ENV)
    points = _installed_entry_points()
    if setting is None:
        return points
    third_party = sorted(point.name for point in points if not _is_own(point))
    wanted = _wanted_names(setting, third_party)
    if wanted == {"none"}:
        return []
    missing = wanted - {point.name for point in points}
    if missing:
        raise PluginError(f"{AUTOLOAD_ENV} names plugins that are not installed: {sorted(missing)}; installed: "
                          f"{third_party or 'none'}")
    return [point for point in points if _is_own(point) or point.name in wanted]


def _entry_point_source(point: importlib.metadata.EntryPoint) -> str:
    dist = point.dist
    where = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
    return f"entry point {point.name} = {point.value} ({where})"


@dataclass(frozen=True)
class LoadedPlugins:
    """The plugin manager and, per plugin name, where it came from; `selectable` are the third-party plugins
    COMPOSER_CORE_PLUGINS can name, `own` composer-core's own entry points."""

    manager: pluggy.PluginManager
    sources: dict[str, str]
    selectable: tuple[str, ...]
    own: tuple[str, ...]


def load_plugins() -> LoadedPlugins:
    """A fresh plugin manager with built-ins and the selected entry points, hooks checked but not yet called."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(HookSpecs)
    sources: dict[str, str] = {}
    for module_name in BUILTIN_MODULES:
        manager.register(importlib.import_module(module_name), name=module_name)
        sources[module_name] = "built-in"
    points = _selected_entry_points()
    for point in points:
        try:
            plugin = point.load()
        except Exception as error:
            raise PluginError(f"plugin {point.name!r} ({_entry_point_source(point)}) failed to import: "
                              f"{type(error).__name__}: {error}; fix or uninstall it, or leave it out with "
                              f"{AUTOLOAD_ENV}") from error
        _register(manager, plugin, point.name)
        sources[point.name] = _entry_point_source(point)
    _check_hooks(manager)
    return LoadedPlugins(manager, sources, tuple(point.name for point in points if not _is_own(point)),
                         tuple(point.name for point in points if _is_own(point)))


HOOK_REGISTRIES = {
    "register_objectives": "objectives",
    "register_advantage_estimators": "advantage_estimators",
    "register_divergences": "divergences",
    "register_preference_losses": "preference_losses",
    "register_trace_formats": "trace_formats",
    "register_hint_providers": "hint_providers",
    "register_guard_rules": "guard_rules",
    "register_backends": "backends",
}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _register(manager: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register one plugin; pluggy's errors (a hook with wrong arguments, a taken name) become PluginError."""
    if manager.has_plugin(name):
        raise PluginError(f"a plugin named {name!r} is already registered; choose another name or unregister it")
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as error:
        raise PluginError(f"plugin {name!r} is invalid: {_one_line(error)}; each hook takes exactly the argument "
                          "`register`") from error


def _check_hooks(manager: pluggy.PluginManager) -> None:
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:  # pluggy's error carries the plugin object, not its name
        name = manager.get_name(error.plugin)
        raise PluginError(f"plugin {name!r} implements a hook composer-core does not define: {_one_line(error)}; "
                          f"known hooks: {', '.join(HOOK_REGISTRIES)}") from error


def _leave_out_advice(conflict: NameConflictError, loaded: LoadedPlugins) -> str:
    """The COMPOSER_CORE_PLUGINS values that leave out one of two conflicting entry-point plugins."""
    options = []
    for plugin in conflict.plugins:
        if plugin in loaded.selectable:
            rest = [name for name in loaded.selectable if name != plugin] or list(loaded.own) or ["none"]
            options.append(f"{AUTOLOAD_ENV}={','.join(rest)} leaves out {plugin!r}")
    if not options:
        return ""
    return f" ({'; '.join(options)})"


def _call_hook(impl: pluggy.HookImpl, hook_name: str, register: Register, source: str) -> None:
    """Call one plugin's hook; whatever it raises (other than a refused registration) names the plugin."""
    try:
        impl.function(register=register)
    except RegistrationError:
        raise
    except Exception as error:
        raise PluginError(f"plugin {impl.plugin_name!r} ({source}) failed in its hook {hook_name}: "
                          f"{type(error).__name__}: {_one_line(error)}; fix or uninstall it, or leave it out with "
                          f"{AUTOLOAD_ENV}") from error


def collect(manager: pluggy.PluginManager, sources: dict[str, str]) -> Registries:
    """Call every plugin's hooks with a `register` callback bound to that plugin's name."""
    registries = Registries(Registry("objective"), Registry("advantage estimator"), Registry("divergence"),
                            Registry("preference loss"), Registry("trace format"), Registry("hint provider"),
                            Registry("guard rule"), Registry("backend"))
    for hook_name, attribute in HOOK_REGISTRIES.items():
        registry = getattr(registries, attribute)
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            source = sources.get(impl.plugin_name, "registered at run time")

            def register(item: Any, *, _plugin: str = impl.plugin_name, _source: str = source,
                         _registry: Registry[Any] = registry) -> None:
                _registry.add(getattr(item, "name", None), item, plugin=_plugin, source=_source)

            _call_hook(impl, hook_name, register, source)
    return registries


def _collect_loaded(loaded: LoadedPlugins) -> Registries:
    """`collect`, with a name conflict's message completed by the COMPOSER_CORE_PLUGINS values that resolve it."""
    try:
        return collect(loaded.manager, loaded.sources)
    except NameConflictError as conflict:
        raise NameConflictError(f"{conflict}{_leave_out_advice(conflict, loaded)}", conflict.plugins) from None


_plugins: LoadedPlugins | None = None
_registries: Registries | None = None


def loaded_plugins() -> LoadedPlugins:
    """The process-wide plugins, loaded on first use; works even when their registrations conflict, so that
    `composer-core plugins` can show what is installed next to the conflict."""
    global _plugins
    if _plugins is None:
        _plugins = load_plugins()
    return _plugins


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    return loaded_plugins().manager


def plugin_sources() -> dict[str, str]:
    """Plugin name to where it came from (built-in or an entry point with its distribution)."""
    return dict(loaded_plugins().sources)


def registries() -> Registries:
    """The process-wide registries (built on first use)."""
    global _registries
    if _registries is None:
        _registries = _collect_loaded(loaded_plugins())
    return _registries


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks) and rebuild the registries.

    On any error (unknown hook, duplicate name, a failing hook) the plugin is unregistered again and the error
    raised.
    """
    global _plugins, _registries
    loaded = loaded_plugins()
    _register(loaded.manager, plugin, name)
    updated = LoadedPlugins(loaded.manager, {**loaded.sources, name: "registered at run time"}, loaded.selectable,
                            loaded.own)
    try:
        _check_hooks(loaded.manager)
        rebuilt = _collect_loaded(updated)
    except Exception:
        loaded.manager.unregister(name=name)
        raise
    _plugins, _registries = updated, rebuilt


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered at run time and rebuild the registries."""
    global _plugins, _registries
    loaded = loaded_plugins()
    loaded.manager.unregister(name=name)
    _plugins = LoadedPlugins(loaded.manager, {key: value for key, value in loaded.sources.items() if key != name},
                             loaded.selectable, loaded.own)
    _registries = None  # rebuilt on the next lookup


def reset_plugins() -> None:
    """Forget the loaded plugins; the next lookup reloads built-ins and entry points."""
    global _plugins, _registries
    _plugins, _registries = None, None
