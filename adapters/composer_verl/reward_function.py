"""`reward` as VeRL's custom reward function (`reward.custom_reward_function.path` / `.name`).

VeRL's reward manager calls one function per sample, by keyword: `fn(data_source=..., solution_str=...,
ground_truth=..., extra_info=...)`. A composer reward function for TRL takes `(prompts, completions, **columns)`
for a whole batch, so the same function cannot serve both. When its source is found on this machine, its `def` is
read (never imported or run) and a signature VeRL cannot call is refused; otherwise the printed comment says which
signature VeRL needs.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from composer_core.config import RewardFunctionConfig
from composer_core.errors import ConfigError
from composer_verl.hydra_text import hydra_value

# the keywords VeRL's reward managers (naive, dapo, ...) pass to the custom reward function
VERL_REWARD_ARGUMENTS = ("data_source", "solution_str", "ground_truth", "extra_info")
VERL_SIGNATURE = "fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs)"
REWARD_KEY = "reward.custom_reward_function"


def local_or_given(location: str) -> str:
    """An existing local path made absolute (the printed block then works from any folder); anything else, such as a
    path on the cluster, as given."""
    path = Path(location).expanduser()
    return str(path.resolve()) if path.exists() else location


def check_one_reward(rewards: list[RewardFunctionConfig]) -> RewardFunctionConfig:
    """The one reward function VeRL takes; several, a weight other than 1 or a metric name are refused."""
    if len(rewards) > 1:
        names = ", ".join(reward.function for reward in rewards)
        raise ConfigError(f"reward: {len(rewards)} functions ({names}), but VeRL's custom_reward_function is one "
                          "function: combine them into one that returns the weighted sum, or train on the trl backend")
    reward = rewards[0]
    if reward.weight != 1.0:
        raise ConfigError(f"reward[0].weight={reward.weight}: VeRL's custom_reward_function has no weight (its score "
                          "is the reward); scale inside the function and leave weight out")
    if reward.name is not None:
        raise ConfigError(f"reward[0].name={reward.name!r}: VeRL logs its one reward under its own metric names "
                          "(critic/score/*); leave name out")
    return reward


def source_file(module: str) -> Path | None:
    """The .py file that defines `module` (a file reference or an importable module), if it is on this machine;
    finding a module's file imports its parent packages, never the module itself."""
    if RewardFunctionConfig.names_a_file(module):
        path = Path(module).expanduser()
        return path if path.is_file() else None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def find_function(file: Path, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The top-level `def name` of `file` (the last one, as Python binds it); None when it is not a plain def."""
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None
    found = None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            found = node
    return found


def signature_problem(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """Why VeRL's keyword call would fail on this def, or None when it accepts it."""
    arguments = function.args
    if arguments.posonlyargs:
        return f"its positional-only parameter {arguments.posonlyargs[0].arg!r} cannot be passed by keyword"
    named = arguments.args + arguments.kwonlyargs
    defaults = {argument.arg for argument in arguments.args[len(arguments.args) - len(arguments.defaults):]}
    defaults |= {argument.arg for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
                 if default is not None}
    required = [argument.arg for argument in named if argument.arg not in defaults]
    unknown = [name for name in required if name not in VERL_REWARD_ARGUMENTS]
    if unknown:
        return f"it requires {', '.join(unknown)}, which VeRL never passes"
    missing = [name for name in VERL_REWARD_ARGUMENTS if name not in {argument.arg for argument in named}]
    if missing and arguments.kwarg is None:
        return f"it takes no {', '.join(missing)} (and no **kwargs)"
    return None


def check_verl_signature(reward: RewardFunctionConfig) -> None:
    """Refuse a reward function, found on this machine, that VeRL's reward manager cannot call."""
    module, name = RewardFunctionConfig.split(reward.function)
    file = source_file(module)
    function = find_function(file, name) if file is not None else None
    problem = signature_problem(function) if function is not None else None
    if problem:
        raise ConfigError(f"reward[0].function {reward.function!r} cannot be VeRL's custom reward function: {problem}. "
                          f"VeRL calls {VERL_SIGNATURE} once per sample (TRL's (prompts, completions, **columns) "
                          "does not carry over); point reward at a function with VeRL's signature "
                          "(examples/verl/arithmetic_reward.py)")


def reward_overrides(rewards: list[RewardFunctionConfig]) -> list[str]:
    """`reward.custom_reward_function.path` / `.name` for the config's one reward function (none: the job's own).
    A module becomes VeRL's `pkg://module`; a local file its absolute path."""
    if not rewards:
        return []
    reward = check_one_reward(rewards)
    check_verl_signature(reward)
    module, name = RewardFunctionConfig.split(reward.function)
    path = local_or_given(module) if RewardFunctionConfig.names_a_file(module) else f"pkg://{module}"
    overrides = [f"{REWARD_KEY}.path={hydra_value(path)}", f"{REWARD_KEY}.name={hydra_value(name)}"]
    if reward.params:  # VeRL passes reward_kwargs to the function as keyword arguments
        overrides.append(f"+{REWARD_KEY}.reward_kwargs={hydra_value(reward.params)}")
    return overrides
