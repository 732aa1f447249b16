"""The user's own run (model, LoRA, data, reward, run settings) on the VeRL backend: what `composer-core train
--backend verl --print-backend-config --with-run-settings` prints reads back from VeRL's own composed config with
the value the composer config gave, and what VeRL cannot honour is one line, exit 2, naming the key.

The printed block goes through the real CLI and bash, then hydra with VeRL's ppo_trainer config (the functions of
test_backend_config_cli); refusals run the CLI's entry point in-process (one through a process), to stay fast.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("verl")
pd = pytest.importorskip("pandas")

from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from test_backend_config_cli import _get, cli, compose, pasted  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.utils.import_utils import load_extern_object  # noqa: E402

from composer_core.cli.main import main as cli_main  # noqa: E402
from composer_core.models.gguf import CACHE_ENV, SOURCE_RECORD, cache_folder  # noqa: E402
from composer_verl.hydra_text import hydra_value  # noqa: E402

pytestmark = pytest.mark.backend("verl")

VERL_REWARD = textwrap.dedent('''
    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        return float(solution_str.strip() == ground_truth)

    def trl_style(prompts, completions, **columns):
        return [0.0 for _ in completions]
''')
USER_RUN_KEYS = ("actor_rollout_ref.model.path", "lora_rank", "data.train_files", "data.val_files", "data.prompt_key",
                 "custom_reward_function", "trainer.logger", "mixed_precision", "enable_gradient_checkpointing",
                 "trainer.test_freq", "data.truncation")


def verl_rows(prompt_column: str, count: int) -> list[dict[str, Any]]:
    """Rows in VeRL's layout, the prompt under `prompt_column`."""
    return [{prompt_column: [{"role": "user", "content": f"{i}+1="}], "data_source": "toy",
             "reward_model": {"style": "rule", "ground_truth": str(i + 1)}, "extra_info": {"index": i}}
            for i in range(count)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """VeRL-layout train Parquet and eval JSONL (prompt column `question`), a reward file, a model folder."""
    root = tmp_path_factory.mktemp("user_run")
    pd.DataFrame(verl_rows("question", 8)).to_parquet(root / "train.parquet")
    (root / "eval.jsonl").write_text("\n".join(json.dumps(row) for row in verl_rows("question", 4)), encoding="utf-8")
    pd.DataFrame([{"question": "1+1=", "data_source": "toy"}]).to_parquet(root / "strings.parquet")
    (root / "rows.csv").write_text("question,answer\n1+1=,2\n", encoding="utf-8")
    (root / "rewards_verl_user_run.py").write_text(VERL_REWARD, encoding="utf-8")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}", encoding="utf-8")
    return {"root": root, "train": root / "train.parquet", "eval": root / "eval.jsonl", "model": root / "model",
            "rewards": root / "rewards_verl_user_run.py", "strings": root / "strings.parquet", "csv": root / "rows.csv"}


def job(files: dict[str, Path], **sections: Any) -> dict[str, Any]:
    """A user's run on their data (Parquet train, JSONL eval, prompt column `question`); a mapping in `sections`
    updates that section's keys, anything else replaces the section."""
    config: dict[str, Any] = {
        "policy": {"objective": {"name": "dr_grpo"}},
        "model": {"path": str(files["model"]),
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}},
        "data": {"train": str(files["train"]), "eval": str(files["eval"]), "prompt_column": "question",
                 "eval_size": 3},
        "reward": [f"{files['rewards']}:compute_score"],
        "run": {"max_steps": 30, "max_prompt_length": 300, "eval_steps": 7, "precision": "bf16",
                "gradient_checkpointing": True, "report_to": ["tensorboard"]}}
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value} if isinstance(value, dict) else value
    return config


def printed(config: dict[str, Any], folder: Path, *extra: str) -> str:
    """The CLI's printed block for `config`, written as job.yaml (YAML is a superset of JSON)."""
    path = folder / "job.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = cli("train", "--backend", "verl", "--print-backend-config", *extra, "--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_user_run_key_reads_back_from_verls_config(files: dict[str, Path], tmp_path: Path) -> None:
    composed = compose(pasted(printed(job(files), tmp_path, "--with-run-settings")))
    model = composed.actor_rollout_ref.model
    assert model.path == str(files["model"].resolve())
    assert (model.lora_rank, model.lora_alpha, list(model.target_modules)) == (8, 16, ["q_proj", "v_proj"])
    assert model.enable_gradient_checkpointing is True
    assert _get(composed, "data.train_files") == str(files["train"].resolve())
    assert _get(composed, "data.val_files") == str(files["eval"].resolve())
    assert (_get(composed, "data.prompt_key"), _get(composed, "data.val_max_samples")) == ("question", 3)
    assert (_get(composed, "data.max_prompt_length"), _get(composed, "data.truncation")) == (300, "left")
    assert _get(composed, "actor_rollout_ref.rollout.prompt_length") == 300  # VeRL's interpolation follows
    assert (_get(composed, "trainer.test_freq"), _get(composed, "trainer.val_before_train")) == (7, True)
    assert list(_get(composed, "trainer.logger")) == ["console", "tensorboard"]
    for role in ("actor", "ref"):
        engine = omega_conf_to_dataclass(composed.actor_rollout_ref[role].fsdp_config)
        assert engine.mixed_precision == {"param_dtype": "bf16"}, role
    reward = composed.reward.custom_reward_function
    assert (reward.path, reward.name) == (str(files["rewards"].resolve()), "compute_score")
    assert callable(load_extern_object(reward.path, reward.name))  # as VeRL's reward loader reads it
    assert _get(composed, "trainer.default_local_dir") == "runs/composer"
    assert (_get(composed, "data.seed"), _get(composed, "actor_rollout_ref.actor.data_loader_seed")) == (0, 0)


@pytest.fixture()
def gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A .gguf file whose conversion is already in the composer-core cache (so nothing converts here)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    file = tmp_path / "tiny.gguf"
    file.write_bytes(b"GGUF")
    folder = cache_folder(file)
    folder.mkdir(parents=True)
    (folder / SOURCE_RECORD).write_text("{}", encoding="utf-8")
    return file, folder


def test_a_gguf_prints_its_converted_folder_and_a_module_reward_its_pkg_path(
        files: dict[str, Path], gguf: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(files["root"]))
    monkeypatch.syspath_prepend(str(files["root"]))
    config = job(files, model={"path": str(gguf[0]), "lora": {"r": 4, "alpha": 32.0, "dropout": 0}},
                 reward=["rewards_verl_user_run:compute_score"],
                 data={"eval": None},
                 run={"precision": "fp32", "eval_steps": None, "max_prompt_length": None,
                      "gradient_checkpointing": False, "report_to": []})
    composed = compose(pasted(printed(config, tmp_path, "--with-run-settings")))
    model = composed.actor_rollout_ref.model
    assert model.path == str(gguf[1])
    assert (model.lora_rank, model.lora_alpha, model.target_modules) == (4, 32, "all-linear")
    assert model.enable_gradient_checkpointing is False
    assert (_get(composed, "trainer.val_before_train"), _get(composed, "trainer.test_freq")) == (False, -1)
    assert list(_get(composed, "trainer.logger")) == ["console"]  # VeRL's default would add wandb
    assert _get(composed, "data.max_prompt_length") == 512 and _get(composed, "data.truncation") == "error"  # unset
    reward = composed.reward.custom_reward_function
    assert (reward.path, reward.name) == ("pkg://rewards_verl_user_run", "compute_score")
    assert callable(load_extern_object(reward.path, reward.name))
    actor = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    assert actor.fsdp_config.mixed_precision == {"param_dtype": "fp32"}


def test_a_hub_model_id_is_printed_as_it_is(files: dict[str, Path], tmp_path: Path) -> None:
    config = job(files, model={"path": "Qwen/Qwen2.5-0.5B-Instruct"})
    composed = compose(pasted(printed(config, tmp_path, "--with-run-settings")))
    assert composed.actor_rollout_ref.model.path == "Qwen/Qwen2.5-0.5B-Instruct"


def test_without_run_settings_the_user_run_stays_the_jobs_own(files: dict[str, Path], tmp_path: Path) -> None:
    """Only the loss is printed; settings that only --with-run-settings maps are not refused here (lora dropout)."""
    config = job(files, model={"lora": {"r": 8}})
    block = printed(config, tmp_path)
    assert not [key for key in USER_RUN_KEYS if key in block]
    assert _get(compose(pasted(block)), "actor_rollout_ref.actor.policy_loss.loss_mode") == "composer_dr_grpo"


DISTILL = {"weight": 0.5, "support": "teacher_topk", "top_k": 20}
# refused with or without --with-run-settings: they change training and VeRL cannot honour them at all
ALWAYS_REFUSED = {
    "targets": (lambda f: {"distill": DISTILL, "data": {"targets": str(f["root"] / "TARGETS.jsonl")}},
                "data.targets", "--backend trl"),
    "run.trl": (lambda f: {"run": {"trl": {"use_vllm": True}}}, "run.trl", "trl backend"),
    "preference pairs": (lambda f: {"data": {"preference_pairs": str(f["root"] / "pairs.jsonl")}},
                         "data.preference_pairs", "trl backend"),
    "hints off": (lambda f: {"distill": DISTILL, "data": {"hints": False}}, "data.hints", "extra_info.hint"),
}
# refused when the run settings are printed: VeRL has no equivalent of the value given
RUN_SETTING_REFUSED = {
    "csv data": (lambda f: {"data": {"train": str(f["csv"])}}, "data.train",
                 "to_parquet"),
    "datasets folder": (lambda f: {"data": {"train": str(f["model"])}}, "data.train",
                        "load_from_disk"),
    "hub data set": (lambda f: {"data": {"train": "openai/gsm8k"}}, "data.train",
                     "load_dataset('openai/gsm8k'"),
    "csv eval": (lambda f: {"data": {"eval": str(f["csv"])}},
                 "data.eval", "parquet"),
    "string prompts": (lambda f: {"data": {"train": str(f["strings"])}}, "data.train",
                       "not a list of chat messages"),
    "missing prompt column": (lambda f: {"data": {"prompt_column": "prompt"}}, "data.train", "no prompt column"),
    "reward columns": (lambda f: {"data": {"reward_columns": ["extra_info"]}}, "data.reward_columns", "extra_info"),
    "two rewards": (lambda f: {"reward": [f"{f['rewards']}:compute_score", f"{f['rewards']}:trl_style"]}, "reward",
                    "one function"),
    "reward weight": (lambda f: {"reward": [{"function": f"{f['rewards']}:compute_score", "weight": 0.5}]},
                      "reward[0].weight", "no weight"),
    "reward name": (lambda f: {"reward": [{"function": f"{f['rewards']}:compute_score", "name": "acc"}]},
                    "reward[0].name", "critic/score"),
    "trl reward signature": (lambda f: {"reward": [f"{f['rewards']}:trl_style"]}, "reward[0].function",
                             "requires prompts, completions"),
    "lora dropout": (lambda f: {"model": {"lora": {"r": 8, "alpha": 16}}}, "model.lora.dropout", "without dropout"),
    "lora alpha": (lambda f: {"model": {"lora": {"r": 8, "alpha": 16.5, "dropout": 0}}}, "model.lora.alpha",
                   "integer"),
    "report_to": (lambda f: {"run": {"report_to": ["comet_ml"]}}, "run.report_to", "no VeRL logger"),
    "logging_steps": (lambda f: {"run": {"logging_steps": 10}}, "run.logging_steps", "every step"),
}


def refusal(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict[str, Any],
            *extra: str) -> tuple[int, str]:
    """The CLI's exit code and stderr for the user's run with `sections` replaced."""
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job(files, **sections)), encoding="utf-8")
    code = cli_main(["train", "--backend", "verl", "--print-backend-config", *extra, "--config", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("with_run_settings", [False, True], ids=["loss-only", "with-run-settings"])
@pytest.mark.parametrize("case", list(ALWAYS_REFUSED))
def test_what_verl_cannot_honour_is_refused_in_both_modes(case: str, with_run_settings: bool,
                                                          files: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    sections, key, hint = ALWAYS_REFUSED[case]
    extra = ("--with-run-settings",) if with_run_settings else ()
    code, err = refusal(files, tmp_path, capsys, sections(files), *extra)
    assert code == 2 and err.count("\n") == 1, err
    assert key in err and hint in err


@pytest.mark.parametrize("case", list(RUN_SETTING_REFUSED))
def test_a_run_setting_verl_cannot_express_is_refused(case: str, files: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sections, key, hint = RUN_SETTING_REFUSED[case]
    code, err = refusal(files, tmp_path, capsys, sections(files), "--with-run-settings")
    assert code == 2 and err.count("\n") == 1, err
    assert key in err and hint in err


def test_a_refusal_through_a_process_is_one_line_without_a_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job(files, run={"trl": {"use_vllm": True}})), encoding="utf-8")
    result = cli("train", "--backend", "verl", "--print-backend-config", "--config", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "run.trl" in result.stderr and "Traceback" not in result.stderr


def test_the_loggers_mapped_are_verls_own() -> None:
    from verl.utils.tracking import Tracking

    from composer_verl.user_run import VERL_LOGGERS

    assert set(VERL_LOGGERS) <= set(Tracking.supported_backend)


PATH_TEXT = st.text(st.sampled_from("/._-:aZ09$'{} "), max_size=12)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(text=st.one_of(PATH_TEXT.map(lambda text: "/" + text), PATH_TEXT.map(lambda text: "./" + text),
                      PATH_TEXT.map(lambda text: "pkg://" + text)))
def test_a_printed_path_reads_back_from_hydra_exactly(text: str) -> None:
    """Paths print unquoted when hydra reads them back so; anything else in them falls back to quoting."""
    override = OverridesParser.create().parse_override(f"data.train_files={hydra_value(text)}")
    assert OmegaConf.create({"probe": override.value()}).probe == text


def test_gradient_accumulation_is_refused_naming_verls_micro_batch_key(files: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job(files, run={"gradient_accumulation_steps": 4})), encoding="utf-8")
    assert cli_main(["train", "--backend", "verl", "--print-backend-config", "--with-run-settings", "--config",
                     str(path)]) == 2
    error = capsys.readouterr().err
    assert "run.gradient_accumulation_steps=4" in error and "ppo_micro_batch_size_per_gpu" in error


def test_the_notes_on_the_built_in_task_never_contradict_a_printed_reward(files: dict[str, Path]) -> None:
    from composer_core.config import ComposerConfig
    from composer_verl.user_run import user_run_notes

    without = " ".join(user_run_notes(ComposerConfig.from_mapping({})))
    reward = [f"{files['rewards']}:compute_score"]
    with_reward = " ".join(user_run_notes(ComposerConfig.from_mapping({"reward": reward})))
    assert "data.* files and the reward stay your job's own" in without
    assert "data.* files stay your job's own" in with_reward and "and the reward stay" not in with_reward
