"""Reward functions by reference: `package.module:function` or `path/to/file.py:function`.

A module reference is imported as Python imports it (installed, or on PYTHONPATH); a file reference is a path
relative to the current directory (as VeRL's custom_reward_function and every other path of the config), loaded
under a private module name. A missing module, file or function, a file that does not import (a syntax error,
an exception), a name that is not callable and an async function are ConfigErrors naming the reference.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from composer_core.config import RewardFunctionConfig
from composer_core.errors import ConfigError
from composer_core.files import check_input

RewardFunction = Callable[..., Sequence[Any]]


@dataclass(frozen=True)
class NamedReward:
    """A loaded reward function with its weight and the name its metrics are logged under."""

    function: RewardFunction
    weight: float
    name: str
    reference: str


def load_reward_functions(configs: Sequence[RewardFunctionConfig]) -> list[NamedReward]:
    """Every configured reward function, loaded; two with the same metric name are refused (their metrics would
    be merged), naming both."""
    loaded: list[NamedReward] = []
    for config in configs:
        function = load_function(config.function)
        name = config.name or getattr(function, "__name__", type(function).__name__)
        if config.params:
            function = with_params(function, config.params, name)
        for other in loaded:
            if other.name == name:
                raise ConfigError(f"reward functions {other.reference!r} and {config.function!r} are both named "
                                  f"{name!r} (metrics are logged by name): give one of them `name: ...`")
        loaded.append(NamedReward(function, config.weight, name, config.function))
    return loaded


def with_params(function: RewardFunction, params: dict[str, Any], name: str) -> RewardFunction:
    """`function` called with `params` as keyword arguments too (a reward function's own settings); a setting the
    function cannot take is refused now, not at the first step."""
    try:
        inspect.signature(function).bind_partial(**params)
    except TypeError as error:
        raise ConfigError(f"reward {name!r}: params {sorted(params)} do not fit its signature: {error}") from None
    except ValueError:  # a builtin without a signature: let the call decide
        pass
    bound = functools.partial(function, **params)
    functools.update_wrapper(bound, function)
    return bound


def load_function(reference: str) -> RewardFunction:
    """The callable a `module:function` or `file.py:function` reference names."""
    location, attribute = RewardFunctionConfig.split(reference)
    load = _file_module if RewardFunctionConfig.names_a_file(location) else _import_module
    module = load(location, reference)
    try:
        function = getattr(module, attribute)
    except AttributeError:
        names = sorted(name for name, value in vars(module).items() if callable(value) and not name.startswith("_"))
        raise ConfigError(f"reward {reference!r}: {location} has no {attribute!r}; its callables: "
                          f"{', '.join(names) or 'none'}") from None
    if not callable(function):
        raise ConfigError(f"reward {reference!r} is a {type(function).__name__}, not a function; name a function "
                          "that takes prompts, completions and the data's columns")
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__):
        raise ConfigError(f"reward {reference!r} is an async function; composer-core calls reward functions "
                          "synchronously: make it a plain function")
    return function


def _import_module(name: str, reference: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(f"{error.name}.")):
            raise ConfigError(f"reward {reference!r}: no module named {error.name!r}; install it or add its folder "
                              "to PYTHONPATH, or name a file: path/to/file.py:function") from None
        raise ConfigError(f"reward {reference!r}: importing {name} failed: {error}") from None
    except Exception as error:  # the user's module raised while importing: report it, not a traceback
        raise ConfigError(f"reward {reference!r}: importing {name} raised {type(error).__name__}: {error}") from None


def _file_module(location: str, reference: str) -> ModuleType:
    """The module of a .py file, under a private name derived from its resolved path (a second reference to the
    same file reuses it)."""
    path = check_input(Path(location).expanduser(), f"reward file of {reference!r}")
    if path.suffix != ".py":
        raise ConfigError(f"reward {reference!r}: {path} is not a .py file")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module_name = f"composer_reward_{digest}_{''.join(c if c.isalnum() else '_' for c in resolved.stem)}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"reward {reference!r}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[module_name]
        raise ConfigError(f"reward {reference!r}: {path} line {error.lineno}: syntax error: {error.msg}") from None
    except Exception as error:  # the user's file raised while importing: report it, not a traceback
        del sys.modules[module_name]
        raise ConfigError(f"reward {reference!r}: importing {path} raised {type(error).__name__}: {error}") from None
    return module


def with_columns(reward: NamedReward, unused_columns: Collection[str]) -> RewardFunction:
    """The reward function under its metric name (TRL names metrics after `__name__`), called without the data
    columns in `unused_columns` (those data.reward_columns leaves out)."""
    function = reward.function
    dropped = frozenset(unused_columns)

    def reward_function(*args: Any, **kwargs: Any) -> Sequence[Any]:
        return function(*args, **{key: value for key, value in kwargs.items() if key not in dropped})

    reward_function.__name__ = reward_function.__qualname__ = reward.name
    reward_function.__doc__ = getattr(function, "__doc__", None)
    return reward_function
