"""The GRPOConfig a ComposerConfig maps to: every run setting, plus `run.trl`'s further GRPOConfig arguments.

The mapping itself does not look at the machine, so `--print-backend-config` shows the same on a laptop as on the
cluster; `machine_settings` adds what depends on the machine (CPU or not) and refuses what it cannot do (fp16 on a
CPU, bf16 on a GPU without it, a logging integration or vLLM that is not installed) before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from typing import Any

import torch
from transformers.integrations import INTEGRATION_TO_CALLBACK
from transformers.integrations.integration_utils import get_available_reporting_integrations
from trl import GRPOConfig
from trl import __version__ as TRL_VERSION
from trl.import_utils import is_vllm_available

from composer_core.config import ComposerConfig, RunConfig
from composer_core.errors import ConfigError

# GRPOConfig arguments that a composer key sets: run.trl must not set them a second way
COMPOSER_KEYS = {
    "output_dir": "run.output_dir (or --output-dir)", "max_steps": "run.max_steps (or --max-steps)",
    "learning_rate": "run.learning_rate", "num_generations": "run.num_generations",
    "per_device_train_batch_size": "run.prompts_per_step (times run.num_generations)",
    "gradient_accumulation_steps": "run.gradient_accumulation_steps",
    "max_completion_length": "run.max_completion_length", "seed": "run.seed", "save_steps": "run.save_steps",
    "logging_steps": "run.logging_steps", "bf16": "run.precision", "fp16": "run.precision",
    "gradient_checkpointing": "run.gradient_checkpointing", "report_to": "run.report_to",
    "eval_steps": "run.eval_steps (with data.eval)", "eval_strategy": "run.eval_steps (with data.eval)",
    "do_eval": "run.eval_steps (with data.eval)", "beta": "policy.kl.coef", "temperature": "distill.temperature",
    # TRL's loss and advantages, which the composer loss replaces
    "loss_type": "policy.objective.name", "importance_sampling_level": "policy.objective.name (gspo)",
    "epsilon": "policy.objective.params", "epsilon_high": "policy.objective.params",
    "delta": "policy.objective.params", "sapo_temperature_pos": "policy.objective.params",
    "sapo_temperature_neg": "policy.objective.params", "vespo_k_pos": "policy.objective.params",
    "vespo_lambda_pos": "policy.objective.params", "vespo_k_neg": "policy.objective.params",
    "vespo_lambda_neg": "policy.objective.params", "scale_rewards": "policy.advantage",
    "multi_objective_aggregation": "policy.advantage and reward[].weight", "reward_weights": "reward[].weight",
    "use_bias_correction_kl": "policy.kl.importance_weighted",
}
# GRPOConfig arguments that act only inside TRL's own loss, which the composer loss replaces: no composer key
TRL_LOSS_ONLY = ("top_entropy_quantile", "entropy_coef", "use_adaptive_entropy", "entropy_coef_min",
                 "entropy_coef_max", "entropy_coef_delta", "entropy_target", "off_policy_mask_threshold")
# the GRPOConfig arguments the composer loss reads; the rest are run settings (printed only when asked)
LOSS_GRPO_SETTINGS = ("beta", "temperature")
PRECISION_FLAGS = {"fp32": {"bf16": False, "fp16": False}, "bf16": {"bf16": True, "fp16": False},
                   "fp16": {"bf16": False, "fp16": True}}


def grpo_arguments() -> list[str]:
    """The names GRPOConfig accepts (TrainingArguments' included)."""
    return [field.name for field in dataclasses.fields(GRPOConfig) if field.init]


def check_trl_arguments(trl: dict[str, Any]) -> None:
    """Refuse a run.trl name GRPOConfig does not have (listing close matches), or one a composer key sets."""
    accepted = grpo_arguments()
    for name in trl:
        if name in COMPOSER_KEYS:
            raise ConfigError(f"run.trl.{name}: GRPOConfig.{name} is set by {COMPOSER_KEYS[name]}; set it there "
                              "and remove it from run.trl")
        if name in TRL_LOSS_ONLY:
            raise ConfigError(f"run.trl.{name}: GRPOConfig.{name} acts inside TRL's own loss, which the composer loss "
                              "replaces; remove it from run.trl")
        if name in RunConfig.model_fields:
            raise ConfigError(f"run.trl.{name} is not a GRPOConfig argument; it is a composer setting: set "
                              f"run.{name}")
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see trl.GRPOConfig for the accepted names"
            raise ConfigError(f"run.trl.{name} is not a GRPOConfig argument of TRL {TRL_VERSION}; {hint}")


def check_report_to(names: list[str]) -> None:
    """Refuse a run.report_to name transformers has no integration for, listing the ones it has (`all`: every
    installed one)."""
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK and name != "all":
            close = difflib.get_close_matches(name, list(INTEGRATION_TO_CALLBACK), n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"run.report_to: {name!r} is not a logging integration of transformers; {hint}accepted: "
                              f"{', '.join(INTEGRATION_TO_CALLBACK)}, all (metrics.jsonl is always written)")


def grpo_settings(config: ComposerConfig, output_dir: str) -> dict[str, Any]:
    """GRPOConfig keyword arguments for a ComposerConfig, the same on every machine (the loss is composer-core's;
    TRL's eval loop stays off: the job's own eval runs every run.eval_steps)."""
    run = config.run
    check_trl_arguments(run.trl)
    check_report_to(run.report_to)
    composer = {"output_dir": output_dir, "max_steps": run.max_steps, "learning_rate": run.learning_rate,
                "per_device_train_batch_size": run.prompts_per_step * run.num_generations,
                "num_generations": run.num_generations, "gradient_accumulation_steps": run.gradient_accumulation_steps,
                "max_completion_length": run.max_completion_length, "temperature": config.distill.temperature,
                "beta": config.policy.kl.coef, "seed": run.seed, "logging_steps": run.logging_steps,
                "save_steps": run.save_steps, **PRECISION_FLAGS[run.precision],
                "gradient_checkpointing": run.gradient_checkpointing, "report_to": list(run.report_to) or "none"}
    return {"save_strategy": "steps", **run.trl, **composer}


def training_device(use_cpu: bool) -> str:
    """Where transformers will train: the CPU when asked or when there is no accelerator."""
    if use_cpu:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def machine_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with `use_cpu` where there is no GPU (unless run.trl sets it), checked against this machine."""
    settings = {"use_cpu": not torch.cuda.is_available(), **settings}
    device = training_device(settings["use_cpu"])
    if settings["fp16"] and device == "cpu":
        raise ConfigError("run.precision=fp16 needs a GPU and this run is on the CPU (accelerate would silently "
                          "train in fp32); use run.precision=bf16 or fp32 here")
    if settings["bf16"] and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"run.precision=bf16: this GPU ({torch.cuda.get_device_name()}) cannot compute in bf16; "
                          "use run.precision=fp16 or fp32")
    report_to = settings["report_to"] if isinstance(settings["report_to"], list) else []
    missing = [name for name in report_to if name not in [*get_available_reporting_integrations(), "all"]]
    if missing:
        raise ConfigError(f"run.report_to: transformers finds no installed package for {', '.join(missing)}; "
                          "install it (for example pip install wandb) or remove it from run.report_to")
    if settings.get("use_vllm") and not is_vllm_available():
        raise ConfigError("run.trl.use_vllm=true but vLLM is not installed: pip install 'trl[vllm]' (see TRL's "
                          "GRPOConfig for the vllm_* settings), or remove run.trl.use_vllm")
    return settings


def build_grpo_config(config: ComposerConfig, output_dir: str, overrides: Mapping[str, Any] | None = None
                      ) -> GRPOConfig:
    """The GRPOConfig a training run uses, `overrides` replacing its arguments (ComposerGRPOTrainer.from_config's);
    a value TRL refuses is a ConfigError quoting TRL."""
    overrides = overrides or {}
    settings = machine_settings({**grpo_settings(config, output_dir), **overrides})
    try:
        return GRPOConfig(**settings)
    except (ValueError, TypeError) as error:
        given = ", ".join([*(f"run.trl.{name}" for name in config.run.trl),
                           *(f"from_config's {name}" for name in overrides)]) or "no run.trl"
        raise ConfigError(f"TRL refuses the GRPOConfig of this run ({given}): {error}") from None


def native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    """What the ComposerConfig maps to in TRL: GRPOConfig arguments, and the composer sections TRL lacks. Without
    run_settings only the arguments the loss reads, so that pasting them leaves a job's own run unchanged."""
    settings = grpo_settings(config, config.run.output_dir)
    if not run_settings:
        settings = {key: settings[key] for key in LOSS_GRPO_SETTINGS}
    composer_only: dict[str, Any] = {"policy": config.policy.model_dump(mode="json"),
                                     "distill": config.distill.model_dump(mode="json"),
                                     "preference": config.preference.model_dump(mode="json")}
    if run_settings and config.run.max_prompt_length is not None:
        composer_only["run"] = {"max_prompt_length": config.run.max_prompt_length}
    return json.dumps({"GRPOConfig": settings,
                       "ComposerGRPOTrainer(composer_config=...)": composer_only}, indent=2)

