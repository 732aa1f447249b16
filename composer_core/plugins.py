"""The plugin system: pluggy hookspecs with a `register` callback, registries, entry-point loading.

Built-in objectives, estimators, divergences and preference losses register through the same hooks as
third-party plugins. Third-party plugins are found through the `composer_core` entry-point group;
`COMPOSER_CORE_PLUGINS` controls autoloading: unset loads all, `none` loads none, `a,b` loads only the entry
points named `a` and `b`.
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
    def register_backends(self, register: Register) -> None:
        """Register training backends: `register(Backend(...))`."""


@dataclass(frozen=True)
class Registered(Generic[T]):
    """One registered item and the plugin that registered it."""

    name: str
    item: T
    plugin: str
    source: str


class Registry(Generic[T]):
    """Names to items of one kind; a duplicate name fails naming both plugins."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Registered[T]] = {}

    def add(self, name: str, item: T, *, plugin: str, source: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} without a name")
        if name in self._entries:
            first = self._entries[name]
            raise PluginError(f"{self.kind} {name!r} is registered twice: by plugin {first.plugin!r} and by plugin "
                              f"{plugin!r}; rename one of them or restrict plugins with {AUTOLOAD_ENV}")
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
)


def _selected_entry_points() -> list[importlib.metadata.EntryPoint]:
    setting = os.environ.get(AUTOLOAD_ENV)
    points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if setting is None:
        return points
    wanted = {name.strip() for name in setting.split(",") if name.strip()}
    if wanted <= {"none"}:
        return []
    missing = wanted - {point.name for point in points}
    if missing:
        raise PluginError(f"{AUTOLOAD_ENV} names plugins that are not installed: {sorted(missing)}; installed: "
                          f"{sorted(point.name for point in points) or 'none'}")
    return [point for point in points if point.name in wanted]


def _entry_point_source(point: importlib.metadata.EntryPoint) -> str:
    dist = point.dist
    where = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"
    return f"entry point {point.name} = {point.value} ({where})"


def build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A fresh plugin manager with built-ins and the selected entry points; returns it and plugin sources."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(HookSpecs)
    sources: dict[str, str] = {}
    for module_name in BUILTIN_MODULES:
        manager.register(importlib.import_module(module_name), name=module_name)
        sources[module_name] = "built-in"
    for point in _selected_entry_points():
        try:
            plugin = point.load()
        except Exception as error:
            raise PluginError(f"plugin {point.name!r} ({_entry_point_source(point)}) failed to import: "
                              f"{type(error).__name__}: {error}; fix or uninstall it, or leave it out with "
                              f"{AUTOLOAD_ENV}") from error
        _register(manager, plugin, point.name)
        sources[point.name] = _entry_point_source(point)
    _check_hooks(manager)
    return manager, sources


HOOK_REGISTRIES = {
    "register_objectives": "objectives",
    "register_advantage_estimators": "advantage_estimators",
    "register_divergences": "divergences",
    "register_preference_losses": "preference_losses",
    "register_trace_formats": "trace_formats",
    "register_hint_providers": "hint_providers",
    "register_backends": "backends",
}


def _one_line(error: Exception) -> str:
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


def collect(manager: pluggy.PluginManager, sources: dict[str, str]) -> Registries:
    """Call every plugin's hooks with a `register` callback bound to that plugin's name."""
    registries = Registries(Registry("objective"), Registry("advantage estimator"), Registry("divergence"),
                            Registry("preference loss"), Registry("trace format"), Registry("hint provider"),
                            Registry("backend"))
    for hook_name, attribute in HOOK_REGISTRIES.items():
        registry = getattr(registries, attribute)
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            source = sources.get(impl.plugin_name, "registered at run time")

            def register(item: Any, *, _plugin: str = impl.plugin_name, _source: str = source,
                         _registry: Registry[Any] = registry) -> None:
                _registry.add(getattr(item, "name", None), item, plugin=_plugin, source=_source)

            impl.function(register=register)
    return registries


@dataclass(frozen=True)
class _Loaded:
    manager: pluggy.PluginManager
    sources: dict[str, str]
    registries: Registries


_state: _Loaded | None = None


def _loaded() -> _Loaded:
    global _state
    if _state is None:
        manager, sources = build_plugin_manager()
        _state = _Loaded(manager, sources, collect(manager, sources))
    return _state


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    return _loaded().manager


def plugin_sources() -> dict[str, str]:
    """Plugin name to where it came from (built-in or an entry point with its distribution)."""
    return dict(_loaded().sources)


def registries() -> Registries:
    """The process-wide registries (built on first use)."""
    return _loaded().registries


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks) and rebuild the registries.

    On any error (unknown hook, duplicate name) the plugin is unregistered again and the error raised.
    """
    global _state
    loaded = _loaded()
    _register(loaded.manager, plugin, name)
    sources = {**loaded.sources, name: "registered at run time"}
    try:
        _check_hooks(loaded.manager)
        _state = _Loaded(loaded.manager, sources, collect(loaded.manager, sources))
    except Exception:
        loaded.manager.unregister(name=name)
        raise


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered at run time and rebuild the registries."""
    global _state
    loaded = _loaded()
    loaded.manager.unregister(name=name)
    sources = {key: value for key, value in loaded.sources.items() if key != name}
    _state = _Loaded(loaded.manager, sources, collect(loaded.manager, sources))


def reset_plugins() -> None:
    """Forget the loaded plugins; the next lookup reloads built-ins and entry points."""
    global _state
    _state = None
