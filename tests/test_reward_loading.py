"""Reward functions by reference (file or module), their names and weights, and the weighted sum used in eval."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from composer_core.config import ComposerConfig, RewardFunctionConfig
from composer_core.errors import ConfigError
from composer_core.rewards import NamedReward, load_function, load_reward_functions, weighted_rewards, with_columns
from composer_core.tasks.arithmetic import RewardResult

REWARDS = '''
from dataclasses import dataclass

@dataclass
class Scored:
    reward: float
    feedback: str

def length(completions, **kwargs):
    return [float(len(text)) for text in completions]

def with_feedback(completions, **kwargs):
    return [Scored(0.5, "too short") for _ in completions]

THRESHOLD = 3
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_relative_to_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "my_rewards.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    length = load_function("my_rewards.py:length")
    assert length(completions=["ab", "abcd"]) == [2.0, 4.0]
    assert load_function("./my_rewards.py:with_feedback")(completions=["x"])[0].feedback == "too short"


def test_a_module_on_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "scoring_pkg"
    package.mkdir()
    write(package, "__init__.py", "")
    write(package, "rules.py", REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_function("scoring_pkg.rules:length")(completions=["abc"]) == [3.0]
    finally:
        for name in ("scoring_pkg", "scoring_pkg.rules"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize(("reference", "message"), [
    ("no_such_module_xyz:score", r"no module named 'no_such_module_xyz'; install it or add its folder to PYTHONPATH"),
    ("missing.py:score", r"reward file of 'missing.py:score' .*missing.py does not exist"),
    ("my_rewards.py:nothing", r"my_rewards.py has no 'nothing'; its callables: Scored, dataclass, length, "
                              r"with_feedback"),
    ("my_rewards.py:THRESHOLD", r"is a int, not a function"),
    ("broken.py:score", r"broken.py line 2: syntax error"),
    ("raising.py:score", r"importing raising.py raised RuntimeError: no GPU here"),
    ("needs_dep.py:score", r"importing needs_dep.py raised ModuleNotFoundError: No module named 'not_installed_dep'"),
    ("async_reward.py:score", r"is an async function"),
    ("my_rewards:length:", r"is not 'package.module:function'"),
])
def test_bad_references_are_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: str,
                                             message: str) -> None:
    write(tmp_path, "my_rewards.py", REWARDS)
    write(tmp_path, "broken.py", "def score(completions):\n    return [\n")
    write(tmp_path, "raising.py", "raise RuntimeError('no GPU here')\n")
    write(tmp_path, "needs_dep.py", "import not_installed_dep\n")
    write(tmp_path, "async_reward.py", "async def score(completions, **kwargs):\n    return [1.0]\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_function(reference)


def test_names_default_to_the_function_and_duplicates_are_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "a.py", REWARDS)
    write(tmp_path, "b.py", REWARDS)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'a.py:length' and 'b.py:length' are both named 'length'.*`name: ...`"):
        load_reward_functions([RewardFunctionConfig(function="a.py:length"),
                               RewardFunctionConfig(function="b.py:length")])
    loaded = load_reward_functions([RewardFunctionConfig(function="a.py:length"),
                                    RewardFunctionConfig(function="b.py:length", name="length_b", weight=0.5)])
    assert [(reward.name, reward.weight) for reward in loaded] == [("length", 1.0), ("length_b", 0.5)]


def test_with_columns_renames_and_passes_only_the_wanted_columns() -> None:
    seen: list[set[str]] = []

    def score(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        seen.append(set(columns))
        return [1.0 for _ in completions]

    bound = with_columns(NamedReward(score, 1.0, "renamed", "test"), {"level"})
    assert bound.__name__ == "renamed"
    bound(prompts=["p"], completions=["c"], answer=[1], level=["easy"], trainer_state=None)
    assert seen == [{"answer", "trainer_state"}]


def test_weighted_rewards_sum_like_trl() -> None:
    def plain(completions: list[str], **_: Any) -> list[float | None]:
        return [1.0, None]

    def objects(completions: list[str], bonus: list[float], **_: Any) -> list[RewardResult]:
        return [RewardResult(value, "feedback") for value in bonus]

    totals = weighted_rewards([plain, objects], [2.0, 0.5], prompts=["p", "q"], completions=["a", "b"],
                              columns={"bonus": [4.0, 6.0]})
    assert totals == [2.0 * 1.0 + 0.5 * 4.0, 0.5 * 6.0]  # None is skipped (TRL's nansum)
    assert weighted_rewards([lambda completions, **_: [True, False]], [1.0], prompts=["p", "q"],
                            completions=["a", "b"], columns={}) == [1.0, 0.0]  # a boolean check is a 1/0 reward


@pytest.mark.parametrize(("result", "message"), [
    ([1.0], r"'bad' returned 1 rewards for 2 completions"),
    (["high", 1.0], r"'bad' returned 'high' for completion 0; rewards must be finite numbers"),
    ([math.nan, 1.0], r"'bad' returned nan for completion 0"),
    ([1.0, math.inf], r"'bad' returned inf for completion 1"),
])
def test_weighted_rewards_refuse_bad_results(result: list[Any], message: str) -> None:
    def bad(completions: list[str], **_: Any) -> list[Any]:
        return result

    with pytest.raises(ConfigError, match=message):
        weighted_rewards([bad], [1.0], prompts=["p", "q"], completions=["a", "b"], columns={})


def test_a_reward_that_raises_is_named() -> None:
    def crashes(completions: list[str], **_: Any) -> list[float]:
        raise KeyError("answer")

    with pytest.raises(ConfigError, match=r"reward function 'crashes' raised KeyError: 'answer'"):
        weighted_rewards([crashes], [1.0], prompts=["p"], completions=["a"], columns={})


@pytest.mark.parametrize(("settings", "message"), [
    ({"run": {"eval_steps": 5}, "data": {"train": "rows.jsonl"}, "reward": "r.py:f"},
     r"run.eval_steps=5 evaluates on held-out prompts, but data.eval is not set"),
    ({"data": {"eval": "held_out.jsonl"}}, r"data.eval describes a user's data set, but the prompts come from the "
                                           r"built-in task 'arithmetic'"),
    ({"data": {"prompt_column": "question"}}, r"data.prompt_column describes a user's data set"),
    ({"data": {"train": "rows.jsonl"}, "reward": {"function": "r.py:f", "name": "a/b"}}, r"reward.0.name"),
])
def test_config_refuses_settings_that_would_be_ignored(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ComposerConfig.from_mapping(settings)
