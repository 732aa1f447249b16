"""Configuration: YAML/JSON loading, defaults, and the errors a user sees."""

import json
from pathlib import Path

import pytest

from composer_core import ComposerConfig, ConfigError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_json_give_the_same_config(tmp_path: Path) -> None:
    settings = {"policy": {"objective": {"name": "dapo", "params": {"clip_ratio_high": 0.3}},
                           "kl": {"coef": 0.01, "estimator": "k1", "placement": "reward"}},
                "distill": {"weight": 0.5, "alpha": 1.0, "top_k": 20},
                "preference": {"weight": 0.1, "loss": "ipo", "beta": 0.2}}
    yaml_text = """
policy:
  objective: {name: dapo, params: {clip_ratio_high: 0.3}}
  kl: {coef: 0.01, estimator: k1, placement: reward}
distill: {weight: 0.5, alpha: 1.0, top_k: 20}
preference: {weight: 0.1, loss: ipo, beta: 0.2}
"""
    from_yaml = ComposerConfig.from_file(write(tmp_path, "c.yaml", yaml_text))
    from_json = ComposerConfig.from_file(write(tmp_path, "c.json", json.dumps(settings)))
    assert from_yaml == from_json
    assert from_yaml.policy.objective.resolve().params.clip_ratio_high == 0.3


def test_defaults_are_composer_like() -> None:
    config = ComposerConfig()
    resolved = config.policy.objective.resolve()
    assert resolved.objective.name == "dr_grpo"
    assert resolved.aggregation == "seq-mean-token-sum-norm"
    assert config.policy.advantage.resolve("dr_grpo")[0].name == "dr_grpo"
    assert config.distill.weight == 0.0 and config.preference.weight == 0.0


def test_unknown_objective_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown objective 'grpoo'; registered: bnpo, cispo, dapo"):
        ComposerConfig.from_mapping({"policy": {"objective": {"name": "grpoo"}}})


@pytest.mark.parametrize(("section", "message"), [
    ({"policy": {"advantage": {"name": "gae"}}}, "unknown advantage estimator 'gae'"),
    ({"distill": {"divergence": "wasserstein"}}, "unknown divergence 'wasserstein'"),
    ({"preference": {"loss": "kto"}}, "unknown preference loss 'kto'"),
])
def test_unknown_names_in_every_registry(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ComposerConfig.from_mapping(section)


def test_objective_params_are_validated_against_the_objective() -> None:
    with pytest.raises(ConfigError, match="invalid params for objective 'gspo'.*clip_ratio"):
        ComposerConfig.from_mapping({"policy": {"objective": {"name": "gspo", "params": {"clip_ratio": 0.2}}}})
    with pytest.raises(ConfigError, match="invalid params for objective 'ppo'.*dual_clip_c"):
        ComposerConfig.from_mapping({"policy": {"objective": {"name": "ppo", "params": {"dual_clip_c": 0.5}}}})
    with pytest.raises(ConfigError, match="invalid params for advantage estimator 'grpo'.*epsilon"):
        ComposerConfig.from_mapping({"policy": {"advantage": {"name": "grpo", "params": {"epsilon": -1}}}})


def test_misspelt_settings_are_errors_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"distill\.alhpa"):
        ComposerConfig.from_mapping({"distill": {"alhpa": 0.5}})
    with pytest.raises(ConfigError, match=r"distill\.alpha"):
        ComposerConfig.from_mapping({"distill": {"alpha": 1.5}})


def test_sampled_token_support_requires_reverse_kl() -> None:
    with pytest.raises(ConfigError, match="set alpha to 1.0"):
        ComposerConfig.from_mapping({"distill": {"support": "sampled_token", "alpha": 0.5}})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        ComposerConfig.from_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        ComposerConfig.from_file(write(tmp_path, "bad.json", "{policy: "))
    with pytest.raises(ConfigError, match=r"list\.yaml must be a mapping"):
        ComposerConfig.from_file(write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"c\.yaml is invalid.*policy\.weight"):
        ComposerConfig.from_file(write(tmp_path, "c.yaml", "policy: {weight: -1}\n"))
