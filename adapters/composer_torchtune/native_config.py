"""A ComposerConfig as the composer GRPO recipe's torchtune YAML (`--print-backend-config`, and what
`composer-core train --backend torchtune` runs).

Without run settings it is the part a user adds to an existing torchtune job: the `loss:` component
(composer_torchtune.loss_section), and for the composer recipe its `advantage:` and `self_distillation:` sections.
With run settings it is the whole recipe config: model builder, tokenizer and checkpointer for the model folder,
data, reward, optimizer, logging, guard and the run's lengths and counts. Settings this recipe cannot honour are
refused here, naming the setting, before any run starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.models import resolve_model_folder
from composer_torchtune.loss_settings import loss_section
from composer_torchtune.model_folder import checkpointer_section, embedded_model, model_section

RECIPE = "composer_torchtune/recipes/composer_grpo.py"
DTYPES = {"fp32": "fp32", "bf16": "bf16"}


def refuse_unsupported(config: ComposerConfig) -> None:
    """Settings of the experiment config that the torchtune recipe does not implement."""
    unsupported = {
        "model.lora": (config.model.lora is not None, "LoRA adapters (use the trl backend)"),
        "data.targets": (config.data.targets is not None, "agent-trace targets (use the trl or verl backend)"),
        "run.gradient_accumulation_steps": (config.run.gradient_accumulation_steps != 1, "gradient accumulation"),
        "run.precision": (config.run.precision not in DTYPES, "fp16 (torchtune trains in fp32 or bf16)"),
        "run.eval_steps": (config.run.eval_steps is not None, "periodic eval (eval runs before and after)"),
        "run.gradient_checkpointing": (config.run.gradient_checkpointing, "activation checkpointing"),
        "run.max_prompt_length": (config.run.max_prompt_length is not None, "prompt truncation"),
        "policy.kl.placement": (config.policy.kl.coef > 0 and config.policy.kl.placement == "reward",
                                "KL in the reward (use placement 'loss')"),
    }
    refused = [f"{name} ({what})" for name, (used, what) in unsupported.items() if used]
    if refused:
        raise ConfigError(f"the torchtune backend does not support {', '.join(refused)}: remove them, or use "
                          "another backend")


def composer_sections(config: ComposerConfig) -> dict[str, Any]:
    """`loss:`, `advantage:` and (self-distillation on) `self_distillation:` of the recipe YAML."""
    estimator, _ = config.policy.advantage.resolve(config.policy.objective.name)
    sections: dict[str, Any] = {
        "loss": loss_section(config),
        "advantage": {"_component_": "composer_torchtune.advantages.GroupAdvantages", "estimator": estimator.name,
                      "params": dict(config.policy.advantage.params)}}
    if config.distill.weight > 0:  # reprompt: the config's own teacher-context settings (selfteach defaults)
        sections["self_distillation"] = {"teacher": config.distill.teacher, "rate": config.distill.teacher_rate,
                                         "reprompt": dict(config.distill.context)}
    return sections


def model_folder(config: ComposerConfig) -> Path:
    return resolve_model_folder(config.model.path) if config.model.path else embedded_model()


def data_sections(config: ComposerConfig) -> dict[str, Any]:
    """`dataset:`, `eval_dataset:` and `reward_fn:`: the built-in task's, or the user's rows and functions."""
    data, seed = config.data, config.run.seed
    if data.builtin_task is not None:
        task = {"_component_": "composer_torchtune.prompts.arithmetic_prompts", "seed": seed, "hints": data.hints}
        sections = {"dataset": {**task, "size": data.train_size, "split": "train"},
                    "eval_dataset": {**task, "size": data.eval_size, "split": "eval"}}
    else:
        rows = {"_component_": "composer_torchtune.prompts.prompt_file", "prompt_column": data.prompt_column,
                "reward_columns": data.reward_columns}
        sections = {"dataset": {**rows, "source": data.train, "split": data.train_split}}
        if data.eval is not None:
            sections["eval_dataset"] = {**rows, "source": data.eval, "split": data.eval_split, "size": data.eval_size}
    if config.reward:
        sections["reward_fn"] = {"_component_": "composer_torchtune.rewards.configured_rewards",
                                 "functions": [reward.model_dump(mode="json") for reward in config.reward]}
    else:
        sections["reward_fn"] = {"_component_": "composer_core.tasks.arithmetic.reward_function",
                                 "with_feedback": True}
    return sections


def run_sections(config: ComposerConfig, output_dir: str) -> dict[str, Any]:
    """Model, tokenizer, checkpointer, optimizer, logging, guard and the run's numbers."""
    folder, run = model_folder(config), config.run
    return {
        "output_dir": output_dir, "seed": run.seed, "device": "cpu", "dtype": DTYPES[run.precision],
        "model": model_section(folder),
        "tokenizer": {"_component_": "composer_torchtune.chat_tokenizer.ChatTokenizer", "path": str(folder)},
        "checkpointer": checkpointer_section(folder, f"{output_dir}/checkpoints"),
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": run.learning_rate},
        "metric_logger": {"_component_": "composer_torchtune.metric_logging.JsonlLogger",
                          "path": f"{output_dir}/metrics.jsonl"},
        "num_steps": run.max_steps, "prompts_per_step": run.prompts_per_step,
        "num_generations": run.num_generations, "max_generated_tokens": run.max_completion_length,
        "temperature": config.distill.temperature, "save_every_n_steps": run.save_steps, "clip_grad_norm": 1.0,
    }


def recipe_config(config: ComposerConfig, output_dir: str | None = None, *, run_settings: bool = True
                  ) -> dict[str, Any]:
    """The recipe YAML as a mapping; without run settings only the composer sections."""
    refuse_unsupported(config)
    sections = composer_sections(config)
    if not run_settings:
        return sections
    guard = {"guard": config.guard.model_dump(mode="json")} if config.guard.enabled else {}
    return {**run_sections(config, output_dir or config.run.output_dir), **data_sections(config), **sections,
            **guard}


def native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    """The YAML text, headed by the command that runs it."""
    head = (f"# tune run {RECIPE} --config this.yaml   (add --nproc_per_node N for N processes)\n"
            if run_settings else
            "# add to a composer_grpo recipe config (the loss: section alone fits torchtune's GRPO loss contract)\n")
    return head + yaml.safe_dump(recipe_config(config, run_settings=run_settings), sort_keys=False)
