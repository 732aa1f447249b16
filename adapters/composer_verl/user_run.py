"""The user's own run on VeRL: model, LoRA, data files, reward function and run settings as VeRL's own hydra keys
(`--print-backend-config --with-run-settings`), and what VeRL cannot honour refused by name.

The keys are VeRL 0.9's, for its default FSDP engine (`model_engine=dp`, which the composer trainer needs).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from composer_core.config import ComposerConfig, LoraConfig, ModelConfig
from composer_core.errors import ConfigError
from composer_core.models.source import classify_model_path
from composer_verl.data_files import verl_data_file
from composer_verl.hydra_text import hydra_value
from composer_verl.reward_function import reward_overrides

MODEL = "actor_rollout_ref.model"
# composer run.precision -> the param_dtype of VeRL's FSDP mixed precision (weights stay fp32, as TRL's amp keeps)
PRECISION_KEYS = ("++actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype",
                  "++actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype")
# run.report_to names whose logger VeRL's Tracking has under the same name (console is always on)
VERL_LOGGERS = ("tensorboard", "wandb", "mlflow", "clearml", "trackio", "swanlab")


def check_honoured(config: ComposerConfig) -> None:
    """Refuse, with or without --with-run-settings, what changes training and that VeRL cannot do at all."""
    data = config.data
    if data.targets is not None:
        raise ConfigError(f"data.targets={data.targets}: agent-trace targets are not implemented on the VeRL backend; "
                          "train them with --backend trl (the TRL backend trains them), or remove data.targets")
    if config.run.trl:
        raise ConfigError(f"run.trl ({', '.join(config.run.trl)}) holds GRPOConfig arguments of the trl backend, which "
                          "VeRL does not read; remove run.trl for the VeRL backend (set VeRL's own keys on its "
                          "command line)")
    if data.preference_pairs is not None:
        raise ConfigError(f"data.preference_pairs={data.preference_pairs}: the trace-replay DPO channel "
                          "(composer-core's own research channel) is not available on the VeRL backend yet; train "
                          "it on the trl backend or remove data.preference_pairs")
    if not data.hints and config.distill.weight > 0:
        raise ConfigError("data.hints=false: on VeRL the composer trainer always gives the teacher a row's "
                          "extra_info.hint; drop the hints from your data's extra_info and leave data.hints at true")


def user_run_overrides(config: ComposerConfig) -> list[str]:
    """VeRL's keys for the model, LoRA, data, reward and run settings; every refusal comes before a GGUF model is
    converted (which takes a while)."""
    run, data, reward = run_settings(config), data_overrides(config), reward_overrides(config.reward)
    lora = lora_overrides(config.model.lora)
    return model_overrides(config.model) + lora + data + reward + run


def model_overrides(model: ModelConfig) -> list[str]:
    """`actor_rollout_ref.model.path`: a local folder as its absolute path, a GGUF file converted (once, cached) to a
    folder, a hub id as it is (VeRL downloads it)."""
    if model.path is None:
        return []
    source = classify_model_path(model.path)
    if source.kind == "gguf":
        from composer_core.models.gguf import cached_conversion

        folder = str(cached_conversion(Path(source.location)))
    else:
        folder = str(Path(source.location).resolve()) if source.kind == "folder" else source.location
    return [f"{MODEL}.path={hydra_value(folder)}"]


def lora_overrides(lora: LoraConfig | None) -> list[str]:
    """VeRL's FSDP LoRA keys; its integer alpha and its missing dropout refuse what they cannot express."""
    if lora is None:
        return []
    if lora.dropout != 0:
        raise ConfigError(f"model.lora.dropout={lora.dropout}: VeRL's FSDP engine builds LoRA without dropout (peft's "
                          "lora_dropout 0; only its Megatron engine has lora.dropout); set model.lora.dropout to 0 for "
                          "VeRL (0.05 is the default)")
    if lora.alpha != int(lora.alpha):
        raise ConfigError(f"model.lora.alpha={lora.alpha}: VeRL's lora_alpha is an integer; give a whole number")
    return [f"{MODEL}.lora_rank={lora.r}", f"{MODEL}.lora_alpha={int(lora.alpha)}",
            f"{MODEL}.target_modules={hydra_value(lora.target_modules)}"]


def data_overrides(config: ComposerConfig) -> list[str]:
    """data.train -> data.train_files, prompt_column -> prompt_key, data.eval -> data.val_files and the evaluation
    schedule; the built-in task prints nothing (VeRL has no built-in task: the job's own files stay)."""
    data = config.data
    if data.train is None:
        return [f"trainer.test_freq={config.run.eval_steps}"] if config.run.eval_steps is not None else []
    if data.reward_columns is not None:
        raise ConfigError(f"data.reward_columns={data.reward_columns}: VeRL hands its reward function data_source, "
                          "reward_model.ground_truth and extra_info, not columns by name; put what it reads in "
                          "extra_info and remove data.reward_columns")
    train = verl_data_file(data.train, setting="data.train", split=data.train_split, prompt_key=data.prompt_column)
    lines = [f"data.train_files={hydra_value(train)}", f"data.prompt_key={hydra_value(data.prompt_column)}"]
    if data.eval is None:
        return [*lines, "trainer.val_before_train=false", "trainer.test_freq=-1"]
    val = verl_data_file(data.eval, setting="data.eval", split=data.eval_split, prompt_key=data.prompt_column)
    return [*lines, f"data.val_files={hydra_value(val)}", f"data.val_max_samples={data.eval_size}",
            "trainer.val_before_train=true", f"trainer.test_freq={config.run.eval_steps or config.run.max_steps}"]


def run_settings(config: ComposerConfig) -> list[str]:
    """Prompt length, gradient checkpointing, precision and loggers; a run.logging_steps other than 1 is refused
    (VeRL logs every step)."""
    run = config.run
    if run.logging_steps != 1:
        raise ConfigError(f"run.logging_steps={run.logging_steps}: VeRL logs every step and has no setting for it; "
                          "set run.logging_steps to 1 (the default) for VeRL")
    lines = [f"data.max_prompt_length={run.max_prompt_length}", "data.truncation=left"] \
        if run.max_prompt_length is not None else []
    lines.append(f"{MODEL}.enable_gradient_checkpointing={hydra_value(run.gradient_checkpointing)}")
    lines += [f"{key}={run.precision}" for key in PRECISION_KEYS]
    return [*lines, f"trainer.logger={hydra_value(['console', *verl_loggers(run.report_to)])}"]


def verl_loggers(names: list[str]) -> list[str]:
    """run.report_to as VeRL's trainer.logger names; one VeRL has no logger for is refused."""
    for name in names:
        if name not in VERL_LOGGERS:
            close = difflib.get_close_matches(name, VERL_LOGGERS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"run.report_to: {name!r} has no VeRL logger (trainer.logger); {hint}VeRL logs to "
                              f"{', '.join(VERL_LOGGERS)} (console always)")
    return list(dict.fromkeys(names))


def user_run_notes(config: ComposerConfig) -> list[str]:
    """Comment lines on what the printed run settings mean on VeRL, where it differs from the trl backend."""
    notes = []
    if config.data.train is None:
        kept = "data.* files stay" if config.reward else "data.* files and the reward stay"
        notes.append(f"# data: the built-in task has no VeRL form: {kept} your job's own "
                     "(examples/verl/ writes the arithmetic task for VeRL).")
    else:
        notes.append("# data: VeRL reads its own row layout: prompt as chat messages, data_source, "
                     "reward_model.ground_truth, extra_info.")
    if config.reward:
        notes.append("# reward: VeRL calls it once per sample as fn(data_source, solution_str, ground_truth, "
                     "extra_info), not TRL's (prompts, completions, **columns).")
    if config.data.eval is not None:
        notes.append(f"# eval: VeRL takes {config.data.eval_size} rows of data.val_files at random while "
                     "data.shuffle is on (VeRL's default), where the trl backend takes the first.")
    notes.append("# precision: the training engine's (FSDP mixed precision); actor_rollout_ref.rollout.dtype stays "
                 "your job's own.")
    return notes
