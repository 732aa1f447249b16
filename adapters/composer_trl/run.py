"""The main job: train a policy with the composer loss through TRL, on the embedded default or a given model.

`composer-core train` calls `run_job`: it builds the task's data, maps the ComposerConfig onto TRL's
GRPOConfig, measures the eval reward, trains with TRL's own loop (progress bar, checkpoints), writes
metrics as JSONL and a PNG plot, and measures the eval reward again. SIGINT / SIGTERM save a usable
checkpoint (composer_trl.stopping); `resume` continues a run from its last checkpoint (composer_trl.run_folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.files import atomic_directory, write_text_atomic
from composer_core.replay.pairs import pairs_to_dataset, read_pairs_jsonl
from composer_core.tasks import arithmetic
from composer_trl.defaults import EMBEDDED_MODEL
from composer_trl.model_folder import check_model_folder, load_model
from composer_trl.plots import plot_metrics
from composer_trl.run_folder import (
    CHECKPOINTS,
    METRICS,
    SUMMARY,
    checkpoint_step,
    checkpoints,
    is_complete,
    prepare_output_folder,
    refuse_previous_run,
    resume_checkpoint,
    run_lock,
    trim_metrics,
)
from composer_trl.stopping import GracefulStop, RunInterrupted
from composer_trl.trainer import ComposerGRPOTrainer

EVAL_BATCH = 32


def grpo_settings(config: ComposerConfig, output_dir: str) -> dict[str, Any]:
    """GRPOConfig keyword arguments for a ComposerConfig (the loss itself is composer-core's)."""
    run = config.run
    return {"output_dir": output_dir, "max_steps": run.max_steps, "learning_rate": run.learning_rate,
            "per_device_train_batch_size": run.prompts_per_step * run.num_generations,
            "num_generations": run.num_generations, "gradient_accumulation_steps": run.gradient_accumulation_steps,
            "max_completion_length": run.max_completion_length, "temperature": config.distill.temperature,
            "beta": config.policy.kl.coef, "seed": run.seed, "logging_steps": 1, "save_steps": run.save_steps,
            "save_strategy": "steps", "report_to": "none", "bf16": False, "use_cpu": not torch.cuda.is_available()}


# the GRPOConfig arguments the composer loss reads; the rest are run settings (printed only when asked)
LOSS_GRPO_SETTINGS = ("beta", "temperature")


def native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    """What the ComposerConfig maps to in TRL: GRPOConfig arguments, and the composer sections TRL lacks. Without
    run_settings only the arguments the loss reads, so that pasting them leaves a job's own run unchanged."""
    settings = grpo_settings(config, config.run.output_dir)
    if not run_settings:
        settings = {key: settings[key] for key in LOSS_GRPO_SETTINGS}
    composer_only = {"policy": config.policy.model_dump(mode="json"),
                     "distill": config.distill.model_dump(mode="json"),
                     "preference": config.preference.model_dump(mode="json")}
    return json.dumps({"GRPOConfig": settings,
                       "ComposerGRPOTrainer(composer_config=...)": composer_only}, indent=2)


def task_dataset(config: ComposerConfig, size: int, split: arithmetic.Split) -> Dataset:
    rows = [problem.row() for problem in arithmetic.make_problems(size, config.run.seed, split)]
    if not config.data.hints:
        rows = [{key: value for key, value in row.items() if key != "hint"} for row in rows]
    return Dataset.from_list(rows)


@torch.no_grad()
def eval_reward(model: Any, tokenizer: PreTrainedTokenizerBase, problems: list[arithmetic.Problem],
                max_new_tokens: int) -> float:
    """Mean reward of greedy completions on held-out problems."""
    model.eval()
    total = 0.0
    for start in range(0, len(problems), EVAL_BATCH):
        batch = problems[start:start + EVAL_BATCH]
        texts = [tokenizer.apply_chat_template(problem.messages, tokenize=False, add_generation_prompt=True)
                 for problem in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False).to(model.device)
        generated = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        completions = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        total += sum(arithmetic.score(problem, text).reward for problem, text in zip(batch, completions, strict=True))
    model.train()
    return total / len(problems)


class MetricsFile(TrainerCallback):
    """Appends every log TRL emits, with its step, to a JSONL file as it happens (a resumed run appends after the
    rows it kept)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        if fresh:
            write_text_atomic(path, "", what="metrics file")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs and state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def model_path_of(config: ComposerConfig) -> Path:
    """The checked model folder: model.path, or the embedded model."""
    return check_model_folder(Path(config.model.path) if config.model.path else EMBEDDED_MODEL)


def run_job(config: ComposerConfig, *, output_dir: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate before and after, and write metrics.jsonl, metrics.png and summary.json.

    One run per output folder (a lock file); a folder holding an earlier run is refused unless `resume`, which
    continues it from its newest complete checkpoint. SIGINT / SIGTERM save a checkpoint and mark the summary
    interrupted (see composer_trl.stopping).
    """
    model_path = model_path_of(config)
    out = prepare_output_folder(output_dir or config.run.output_dir, inputs=[model_path])
    with GracefulStop() as stop, run_lock(out):
        checkpoint = None
        if resume:
            checkpoint = resume_point(out, config)
        else:
            refuse_previous_run(out)
        return train_in(out, config, model_path, checkpoint, stop)


def resume_point(out: Path, config: ComposerConfig) -> Path:
    """The checkpoint a resumed run continues from, with metrics.jsonl cut back to its step."""
    checkpoint = resume_checkpoint(out)
    step = checkpoint_step(checkpoint)
    if step >= config.run.max_steps:
        raise ConfigError(f"--resume: the last checkpoint {checkpoint} is at step {step} and run.max_steps is "
                          f"{config.run.max_steps}: nothing is left to train; pass a larger --max-steps")
    dropped = trim_metrics(out / METRICS, step)
    print(f"resuming from {checkpoint} (step {step}); dropped {dropped} metrics rows logged after it",
          file=sys.stderr)
    return checkpoint


def train_in(out: Path, config: ComposerConfig, model_path: Path, checkpoint: Path | None,
             stop: GracefulStop) -> dict[str, Any]:
    """The run itself, in a locked output folder."""
    model, tokenizer = load_model(model_path)
    eval_problems = arithmetic.make_problems(config.data.eval_size, config.run.seed, "eval")
    max_tokens = config.run.max_completion_length
    before = eval_reward(model, tokenizer, eval_problems, max_tokens)
    print(f"eval reward before training: {before:.2f} on {len(eval_problems)} held-out prompts", file=sys.stderr)
    metrics = out / METRICS
    pairs = config.data.preference_pairs
    trainer = ComposerGRPOTrainer(model=model, reward_funcs=arithmetic.reward_function(with_feedback=True),
                                  args=GRPOConfig(**grpo_settings(config, str(out / CHECKPOINTS))),
                                  train_dataset=task_dataset(config, config.data.train_size, "train"),
                                  processing_class=tokenizer, composer_config=config,
                                  preference_dataset=pairs_to_dataset(read_pairs_jsonl(pairs)) if pairs else None,
                                  callbacks=[MetricsFile(metrics, fresh=checkpoint is None), stop])
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except RunInterrupted as interrupt:
        print(f"{interrupt.signal.name} again: stopped mid-step; the model is saved as it is, the last complete "
              "checkpoint is the one to --resume from", file=sys.stderr)
    interrupted = stop.received is not None
    final = save_model(trainer, tokenizer, out / ("interrupted" if interrupted else "final"))
    after = None if interrupted else after_training_eval(trainer, tokenizer, eval_problems, max_tokens)
    complete = [path for path in checkpoints(out) if is_complete(path)]
    summary = {"eval_reward_before": before, "eval_reward_after": after, "steps": trainer.state.global_step,
               "max_steps": config.run.max_steps, "interrupted": stop.received is not None,
               "signal": stop.received.name if stop.received is not None else None, "model": str(final),
               "checkpoint": str(complete[-1]) if complete else None,
               "resumed_from": str(checkpoint) if checkpoint else None, "metrics": str(metrics),
               "plot": str(plot_metrics(metrics, out / "metrics.png", before=before, after=after))}
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2), what="run summary")
    return summary


def after_training_eval(trainer: ComposerGRPOTrainer, tokenizer: PreTrainedTokenizerBase,
                        problems: list[arithmetic.Problem], max_tokens: int) -> float | None:
    """The eval reward after training; None when a signal stops it (the summary then says interrupted)."""
    try:
        return eval_reward(trainer.model, tokenizer, problems, max_tokens)
    except RunInterrupted:
        return None


def save_model(trainer: ComposerGRPOTrainer, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """The model and tokenizer for from_pretrained, swapped into `folder` only once complete."""
    with atomic_directory(folder, what="model folder") as staging:
        trainer.save_model(str(staging))
        tokenizer.save_pretrained(staging)
    return folder
