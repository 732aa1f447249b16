"""Configuration: YAML/JSON loading, defaults, and the errors a user sees."""

import json
import os
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from composer_core import ComposerConfig, ConfigError
from composer_core.cli import train
from composer_core.config import DEFAULT_JOB
from composer_core.plugins import registries
from composer_core.selfteach import RepromptSettings


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
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        ComposerConfig.from_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        ComposerConfig.from_file(write(tmp_path, "bad.json", "{policy: "))
    with pytest.raises(ConfigError, match=r"list\.yaml must be a mapping"):
        ComposerConfig.from_file(write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"c\.yaml is invalid.*policy\.weight"):
        ComposerConfig.from_file(write(tmp_path, "c.yaml", "policy: {weight: -1}\n"))


# --- hostile config files: read strictly through composer_core.documents ----------------------------------------

ALIAS_BOMB = "".join([
    'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
    *(f"l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]\n" for level in range(1, 9)),
    "run: {max_steps: 3}\n",
])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bomb.yaml", ALIAS_BOMB, "alias bomb"),
    ("self.yaml", "policy: &p {objective: *p}\n", "refers to itself|recursive"),
    ("dup.yaml", "distill: {weight: 0.5}\ndistill: {weight: 0.0}\n", "duplicate key 'distill' at line 2"),
    ("dup_nested.yaml", "run:\n  max_steps: 5\n  max_steps: 500\n", "duplicate key 'max_steps' at line 3"),
    ("dup.json", '{"distill": {"weight": 0.5, "weight": 0.0}}', "duplicate key 'weight'"),
    ("binary.yaml", b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00", "is not UTF-8 text"),
], ids=["alias-bomb", "self-reference", "duplicate-yaml", "duplicate-yaml-nested", "duplicate-json", "binary"])
def test_hostile_config_files_are_refused_naming_the_file(tmp_path: Path, name: str, content: str | bytes,
                                                          message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message) as caught:
        ComposerConfig.from_file(path)
    assert name in str(caught.value)


def test_a_folder_or_fifo_is_refused_without_reading_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        ComposerConfig.from_file(tmp_path)
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file \\(a FIFO\\)"):  # reading it would block forever
        ComposerConfig.from_file(fifo)


@pytest.mark.parametrize("text", ["0\n", "[]\n", "''\n", "false\n"])
def test_a_document_that_is_not_a_mapping_is_an_error_not_the_defaults(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must be a mapping of settings"):
        ComposerConfig.from_file(write(tmp_path, "c.yaml", text))


def test_an_empty_file_means_the_library_defaults(tmp_path: Path) -> None:
    assert ComposerConfig.from_file(write(tmp_path, "c.yaml", "# nothing set\n")) == ComposerConfig()


# --- non-finite numbers: refused in every float setting and in the free-form settings ----------------------------


def float_settings(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every field of `model` (nested models walked) that accepts a float."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from float_settings(annotation, (*prefix, name))
        elif annotation is float or float in typing.get_args(annotation):
            yield (*prefix, name)


def nested(path: tuple[str, ...], value: object) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value  # type: ignore[return-value]


FLOAT_SETTINGS = [*float_settings(ComposerConfig),
                  *(("distill", "context", *path) for path in float_settings(RepromptSettings)),
                  ("policy", "objective", "params", "clip_ratio_high"), ("policy", "advantage", "params", "epsilon")]


def test_the_float_settings_walk_finds_the_settings_of_every_section() -> None:
    sections = {path[0] for path in FLOAT_SETTINGS}
    assert {"policy", "distill", "preference", "run"} <= sections
    assert ("run", "learning_rate") in FLOAT_SETTINGS and ("distill", "context", "success_reward_threshold") in \
        FLOAT_SETTINGS


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("path", FLOAT_SETTINGS, ids=".".join)
def test_non_finite_numbers_are_refused_naming_the_setting(path: tuple[str, ...], value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        ComposerConfig.from_mapping(nested(path, value))
    message = str(caught.value)
    assert ".".join(path[:2]) in message and path[-1] in message


def test_yaml_inf_and_nan_spellings_are_refused(tmp_path: Path) -> None:
    for spelling in (".inf", "-.Inf", ".NaN", ".INF"):
        with pytest.raises(ConfigError, match="run.learning_rate: Input should be a finite number"):
            ComposerConfig.from_file(write(tmp_path, "c.yaml", f"run: {{learning_rate: {spelling}}}\n"))


def test_non_finite_values_nested_in_free_form_settings_name_their_path() -> None:
    params = {"weights": [1.0, {"inner": float("nan")}]}
    with pytest.raises(ConfigError, match="policy.objective.params: weights.1.inner is not a finite number"):
        ComposerConfig.from_mapping({"policy": {"objective": {"name": "ppo", "params": params}}})


# --- distill.context: validated when the config is built, by the model the teacher-context builder uses ----------


@pytest.mark.parametrize(("context", "message"), [
    ({"success_treshold": 1.0}, "distill.context: success_treshold: Extra inputs are not permitted"),
    ({"max_reprompt_len": 0}, "distill.context: max_reprompt_len: Input should be greater than or equal to 1"),
    ({"truncation_side": "middle"}, "distill.context: truncation_side: Input should be 'left' or 'right'"),
    ({"hint_template": "{tip}"}, "distill.context: hint_template: hint_template must use exactly the fields"),
])
def test_distill_context_errors_name_the_key_and_the_accepted_ones(context: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        ComposerConfig.from_mapping({"distill": {"weight": 0.5, "context": context}})
    assert f"accepted: {', '.join(RepromptSettings.model_fields)}" in str(caught.value)
    with pytest.raises(ValueError):  # what each backend's builder does with the same context
        RepromptSettings(**context)


def test_a_valid_distill_context_reaches_the_builder_unchanged() -> None:
    context = {"success_reward_threshold": 1.0, "truncation_side": "right", "max_reprompt_len": 512}
    config = ComposerConfig.from_mapping({"distill": {"weight": 0.5, "context": context}})
    assert config.distill.context == context
    assert config.distill.reprompt() == RepromptSettings(**context)


# --- the resolved view and the default train job -----------------------------------------------------------------


@pytest.mark.parametrize("objective", registries().objectives.names())
def test_resolved_view_writes_out_the_objectives_defaults_and_loads_back_the_same(objective: str) -> None:
    config = ComposerConfig.from_mapping({"policy": {"objective": {"name": objective}}})
    data, notes = config.resolved()
    resolved = config.policy.objective.resolve()
    section = data["policy"]["objective"]
    assert (section["aggregation"], section["normaliser"]) == (resolved.aggregation, resolved.normaliser)
    assert section["params"] == resolved.params.model_dump(mode="json")
    assert data["policy"]["advantage"]["name"] == registries().objectives.get(objective).advantage
    assert data["distill"]["context"] == RepromptSettings().model_dump(mode="json")
    assert None not in (section["aggregation"], section["normaliser"], data["policy"]["advantage"]["name"])
    assert any(note.startswith("policy.objective.aggregation:") for note in notes)
    assert ComposerConfig.from_mapping(data).resolved() == (data, [])


def test_resolved_view_keeps_explicit_choices_out_of_the_notes() -> None:
    config = ComposerConfig.from_mapping({"policy": {"objective": {"name": "grpo", "aggregation": "token-mean"},
                                                     "advantage": {"name": "rloo"}}})
    data, notes = config.resolved()
    assert data["policy"]["objective"]["aggregation"] == "token-mean"
    assert data["policy"]["advantage"]["name"] == "rloo"
    assert not any(note.startswith(("policy.objective.aggregation", "policy.advantage.name")) for note in notes)
    assert any(note.startswith("policy.objective.normaliser") for note in notes)


def test_train_uses_the_one_default_job_and_it_differs_from_the_library_defaults() -> None:
    assert train.DEFAULT_JOB is DEFAULT_JOB
    job = ComposerConfig.from_mapping(DEFAULT_JOB)
    assert job.distill.weight > 0 and ComposerConfig().distill.weight == 0
