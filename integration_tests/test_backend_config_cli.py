"""`composer-core train --print-backend-config`, run as a user runs it: a real CLI process, its output pasted into a
real bash command line, and the arguments bash hands over composed with VeRL's own hydra config.

What it prints must carry the composer loss and nothing else by default: an existing job's learning rate, batch
shape, lengths, steps and saving stay its own (--with-run-settings adds the config's), and every value reads back
exactly as the config has it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

verl = pytest.importorskip("verl")
hydra = pytest.importorskip("hydra")
verl_config = pytest.importorskip("verl.utils.config")

from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from composer_core import ComposerConfig, registries  # noqa: E402
from composer_core.errors import ConfigError  # noqa: E402
from composer_verl.group import composer_settings  # noqa: E402
from composer_verl.hydra_text import hydra_value  # noqa: E402

pytestmark = pytest.mark.backend("verl")

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
# an existing job's own run settings, which pasting the printed block must leave alone
EXISTING_JOB = {"data.train_batch_size": 512, "actor_rollout_ref.actor.ppo_mini_batch_size": 128,
                "actor_rollout_ref.rollout.n": 8, "data.max_response_length": 3072,
                "actor_rollout_ref.actor.optim.lr": 3e-6, "trainer.total_training_steps": 900, "trainer.save_freq": 50}
JOB = ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", *(f"{k}={v}" for k, v in EXISTING_JOB.items())]
HOSTILE_TEMPLATE = "{prompt} it's \"quoted\" $HOME ${{oops}} \\n a\\\\'b\n\tc {demonstration}{feedback}{hint}\\"
CONFIG = {"policy": {"objective": {"name": "dr_grpo"}},
          "distill": {"weight": 0.5, "support": "teacher_topk", "top_k": 20,
                      "context": {"reprompt_template": HOSTILE_TEMPLATE}},
          "run": {"learning_rate": 0.01, "prompts_per_step": 2, "max_completion_length": 16, "max_steps": 3}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def pasted(block: str) -> list[str]:
    """The arguments bash passes to a command when the printed block is pasted after `command \\`."""
    script = "args() { for arg in \"$@\"; do printf '%s\\0' \"$arg\"; done; }\nargs \\\n" + block + "\n"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.split("\0")[:-1]


def compose(overrides: list[str]):
    with hydra.initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return hydra.compose(config_name="ppo_trainer", overrides=JOB + overrides)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("job") / "job.json"
    path.write_text(json.dumps(CONFIG), encoding="utf-8")
    return path


def test_the_default_block_leaves_the_jobs_run_settings_alone(config_file: Path) -> None:
    result = cli("train", "--backend", "verl", "--config", str(config_file), "--print-backend-config")
    assert result.returncode == 0, result.stderr[-3000:]
    composed = compose(pasted(result.stdout))
    for key, value in EXISTING_JOB.items():
        assert composed[key.split(".")[0]] is not None and _get(composed, key) == value, key
    actor = verl_config.omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == "composer_dr_grpo"
    assert actor.loss_scale_factor == EXISTING_JOB["data.max_response_length"]  # the job's length, not the demo's
    composer, _ = composer_settings(composed)
    assert composer.distill.context["reprompt_template"] == HOSTILE_TEMPLATE


def test_a_printed_objective_setting_reaches_verls_actor_config(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("policy:\n  objective:\n    name: dapo\n", encoding="utf-8")
    result = cli("train", "--config", str(path), "--backend", "verl", "--print-backend-config")
    assert result.returncode == 0, result.stderr[-3000:]
    actor = verl_config.omega_conf_to_dataclass(compose(pasted(result.stdout)).actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == "composer_dapo" and actor.clip_ratio_high == pytest.approx(0.28)


def test_run_settings_are_printed_only_when_asked(config_file: Path) -> None:
    result = cli("train", "--backend", "verl", "--config", str(config_file), "--print-backend-config",
                 "--with-run-settings")
    assert result.returncode == 0, result.stderr[-3000:]
    composed = compose(pasted(result.stdout))
    assert _get(composed, "actor_rollout_ref.actor.optim.lr") == CONFIG["run"]["learning_rate"]
    assert _get(composed, "data.max_response_length") == CONFIG["run"]["max_completion_length"]
    assert _get(composed, "trainer.total_training_steps") == CONFIG["run"]["max_steps"]
    actor = verl_config.omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    assert actor.loss_scale_factor == CONFIG["run"]["max_completion_length"]


def test_the_option_alone_is_refused() -> None:
    result = cli("train", "--backend", "verl", "--with-run-settings")
    assert result.returncode == 2
    assert "--print-backend-config" in result.stderr and "Traceback" not in result.stderr


def test_trl_prints_its_run_settings_only_when_asked() -> None:
    """The same contract on the TRL backend (called in-process: the CLI path is the one tested above)."""
    pytest.importorskip("trl")
    backend = registries().backends.get("trl")
    config = ComposerConfig.from_mapping(CONFIG)
    plain = json.loads(backend.native_config(config))["GRPOConfig"]
    full = json.loads(backend.native_config(config, run_settings=True))["GRPOConfig"]
    assert not {"learning_rate", "max_steps", "per_device_train_batch_size", "save_steps"} & set(plain)
    assert full["learning_rate"] == CONFIG["run"]["learning_rate"] and full["max_steps"] == CONFIG["run"]["max_steps"]


def test_without_a_config_the_message_names_the_setting_and_its_way_out(tmp_path: Path) -> None:
    """The default job's full-vocabulary support cannot run on VeRL: the error says what to set and how, and
    following it (the job from `composer-core config`, support changed, passed with --config) works."""
    refused = cli("train", "--backend", "verl", "--print-backend-config")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "distill.support" in refused.stderr and "--config" in refused.stderr
    shown = cli("config")
    assert shown.returncode == 0, shown.stderr[-2000:]
    job = json.loads(shown.stdout)
    job["distill"]["support"] = "teacher_topk"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    result = cli("train", "--backend", "verl", "--config", str(path), "--print-backend-config")
    assert result.returncode == 0, result.stderr[-3000:]
    composer, _ = composer_settings(compose(pasted(result.stdout)))
    assert composer.distill.support == "teacher_topk"


TRICKY = st.sampled_from(["'", "\\", "${", "}", "\n", "\t", " ", "=", ",", "[", "null", "1e3", "inf", "nan", "-"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.lists(st.one_of(TRICKY, st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                                                max_size=4)), max_size=8).map("".join))
def test_any_string_reads_back_from_hydra_exactly(text: str) -> None:
    """Through hydra's own override parser and OmegaConf's resolution, as `compose` reads a command line."""
    override = OverridesParser.create().parse_override(f"+composer.probe={hydra_value(text)}")
    assert OmegaConf.create({"probe": override.value()}).probe == text


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(value=st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True), JSON_VALUES, max_size=4))
def test_a_nested_mapping_reads_back_from_hydra_exactly(value: dict) -> None:
    """A plugin objective's params may nest mappings and lists: printed as a hydra dict, read back as given."""
    override = OverridesParser.create().parse_override(f"+composer.probe={hydra_value(value)}")
    assert OmegaConf.to_container(OmegaConf.create({"probe": override.value()}))["probe"] == value


def test_a_mapping_key_hydra_cannot_read_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"keys \['a b'\] cannot be written as hydra mapping keys"):
        hydra_value({"a b": 1})


def _get(composed, dotted: str):
    node = composed
    for part in dotted.split("."):
        node = node[part]
    return node
