"""The run's settings reach TRL's GRPOConfig; the console, the saved config and TensorBoard, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch
from trl.import_utils import is_vllm_available

from composer_core.config import DEFAULT_JOB, ComposerConfig
from composer_core.errors import ConfigError
from composer_trl.console import header, other_line, step_line
from composer_trl.prompt_length import truncate_prompt_ids
from composer_trl.run import run_job
from composer_trl.trl_settings import build_grpo_config, grpo_settings, native_config


def job(*overrides: str) -> ComposerConfig:
    return ComposerConfig.from_mapping(DEFAULT_JOB, overrides=overrides)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_every_run_setting_and_run_trl_reach_grpo_config(tmp_path: Path) -> None:
    config = job("run.precision=bf16", "run.gradient_checkpointing=true", "run.logging_steps=3",
                 "run.report_to=[tensorboard]", "run.trl.lr_scheduler_type=cosine", "run.trl.warmup_steps=2",
                 "run.trl.use_cpu=true")
    args = build_grpo_config(config, str(tmp_path))
    assert (args.bf16, args.fp16, args.gradient_checkpointing, args.logging_steps) == (True, False, True, 3)
    assert args.report_to == ["tensorboard"] and args.lr_scheduler_type == "cosine" and args.warmup_steps == 2
    assert args.eval_strategy == "no"  # the job's own eval runs every run.eval_steps, not TRL's loop
    plain = build_grpo_config(job(), str(tmp_path))
    assert (plain.bf16, plain.gradient_checkpointing, plain.report_to, plain.logging_steps) == (False, False, [], 1)


def test_fp16_on_the_cpu_is_refused_instead_of_silently_training_in_fp32(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run.precision=fp16 needs a GPU.*bf16 or fp32"):
        build_grpo_config(job("run.precision=fp16", "run.trl.use_cpu=true"), str(tmp_path))


@pytest.mark.parametrize(("override", "message"), [
    ("run.trl.lr_schedular_type=cosine", "run.trl.lr_schedular_type is not a GRPOConfig argument of TRL 1.16.0; did "
                                         "you mean lr_scheduler_type"),
    ("run.trl.learning_rate=0.1", "set by run.learning_rate"),
    ("run.trl.beta=0.1", "set by policy.kl.coef"),
    ("run.trl.num_generations=8", "set by run.num_generations"),
    ("run.trl.loss_type=grpo", "set by policy.objective.name"),
    ("run.trl.max_prompt_length=64", "it is a composer setting: set run.max_prompt_length"),
    ("run.trl.entropy_coef=0.1", "acts inside TRL's own loss"),
    ("run.report_to=[tensorbord]", "'tensorbord' is not a logging integration of transformers; did you mean "
                                   "tensorboard"),
])
def test_settings_that_cannot_be_used_are_refused_naming_what_to_use(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        grpo_settings(job(override), "out")


def test_a_value_trl_refuses_is_a_config_error_quoting_trl(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRL refuses the GRPOConfig of this run.*generation_batch_size"):
        build_grpo_config(job("run.trl.generation_batch_size=7"), str(tmp_path))


@pytest.mark.skipif(is_vllm_available(), reason="vLLM is installed: TRL itself takes use_vllm over")
def test_use_vllm_passes_through_and_says_what_it_needs(tmp_path: Path) -> None:
    assert grpo_settings(job("run.trl.use_vllm=true", "run.trl.vllm_mode=colocate"), "out")["vllm_mode"] == "colocate"
    with pytest.raises(ConfigError, match=r"pip install 'trl\[vllm\]'"):
        build_grpo_config(job("run.trl.use_vllm=true"), str(tmp_path))


def test_the_printed_mapping_holds_the_run_settings_and_run_trl() -> None:
    config = job("run.precision=bf16", "run.trl.lr_scheduler_type=cosine", "run.max_prompt_length=64")
    full = json.loads(native_config(config, run_settings=True))
    assert full["GRPOConfig"]["bf16"] is True and full["GRPOConfig"]["lr_scheduler_type"] == "cosine"
    assert "use_cpu" not in full["GRPOConfig"]  # the mapping does not depend on the machine printing it
    assert full["ComposerGRPOTrainer(composer_config=...)"]["run"] == {"max_prompt_length": 64}
    assert set(json.loads(native_config(config))["GRPOConfig"]) == {"beta", "temperature"}


def test_prompts_keep_their_last_tokens_and_the_cut_is_counted() -> None:
    ids, fraction = truncate_prompt_ids([[1, 2, 3, 4, 5], [6, 7]], 3, {})
    assert ids == [[3, 4, 5], [6, 7]] and fraction == 0.5
    with pytest.raises(ConfigError, match="would cut a prompt with images"):
        truncate_prompt_ids([[1, 2, 3, 4, 5]], 3, {"pixel_values": torch.zeros(1)})


def test_the_header_and_step_line_say_what_trains_and_how_it_goes() -> None:
    config = job("preference.weight=0.2", "data.preference_pairs=pairs.jsonl", "policy.kl.coef=0.01")
    text = header(config, model="m", output=Path("out"), backend="trl")
    assert "policy x1 (dr_grpo, kl 0.01 (k3))" in text and "self-distillation x0.5 (generalized_jsd" in text
    assert "trace-replay DPO x0.2 (sigmoid)" in text and "preference pairs pairs.jsonl" in text
    line = step_line({"loss": 0.5, "reward": 0.25, "grad_norm": 1.5, "completions/mean_length": 9.0}, 3, 10, 0.5)
    assert line == "step 3/10  loss 0.5  reward 0.250  grad 1.5  0.50 s/step"
    assert other_line({"eval/reward": 0.5, "eval/reward_std": 0.25}, 4, 10) == \
        "step 4/10  eval reward 0.500 (std 0.250 over prompts)"


def test_a_run_writes_tensorboard_events_its_config_and_compact_lines_and_resumes_only_the_same_job(
        tmp_path: Path) -> None:
    """One short real run with run settings and run.trl; then resuming with a different learning rate is refused
    naming the key, and resuming from the saved config.json continues the run (in-process: the CLI path is the first
    run's)."""
    run = tmp_path / "run"
    overrides = ["data.train_size=16", "data.eval_size=4", "run.prompts_per_step=2", "run.max_completion_length=6",
                 "run.report_to=[tensorboard]", "run.trl.lr_scheduler_type=constant",
                 "run.save_steps=2", "run.max_prompt_length=12"]
    first = cli("train", "--output-dir", str(run), "--max-steps", "2", *overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "channels: policy x1 (dr_grpo); self-distillation x0.5" in first.stderr
    assert "step 2/2  loss " in first.stderr and "{'loss'" not in first.stderr  # compact lines, not TRL's dict
    assert "Loading weights" not in first.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"completions/mean_length", "composer/distill/coverage", "grad_norm", "reward"} <= set(rows[0])
    assert rows[0]["composer/prompts/truncated_fraction"] == 1.0  # the chat-templated prompts exceed 12 tokens
    assert list(run.glob("checkpoints/runs/*/events.out.tfevents.*"))
    args = torch.load(run / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert (args.lr_scheduler_type, args.report_to, args.save_steps) == ("constant", ["tensorboard"], 2)
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["max_steps"] == 2 and saved["run"]["output_dir"] == str(run.resolve())

    changed = job(*overrides, "run.max_steps=3", "run.learning_rate=0.5")
    with pytest.raises(ConfigError, match=r"trains differently.*: run\.learning_rate: 0\.0001 -> 0\.5\. Resume"):
        run_job(changed, output_dir=str(run), resume=True)  # the one difference named, run.max_steps allowed

    saved_job = ComposerConfig.from_file(run / "config.json", ["run.max_steps=3"])  # what --config ... --resume runs
    assert run_job(saved_job, resume=True)["steps"] == 3  # run.output_dir is the run's folder
    assert json.loads((run / "config.json").read_text())["run"]["max_steps"] == 3
