"""The main job: train a policy with the composer loss through TRL, on the embedded default or a given model.

`composer-core train` calls `run_job`: it builds the prompts and reward functions (the built-in task's or the
user's: composer_trl.job_data), maps the ComposerConfig onto TRL's GRPOConfig, measures the eval reward
(composer_trl.evaluation), trains with TRL's own loop (progress bar, checkpoints), writes metrics as JSONL and a
PNG plot, and measures the eval reward again. SIGINT / SIGTERM save a usable
checkpoint (composer_trl.stopping); `resume` continues a run from its last checkpoint (composer_trl.run_folder).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.files import atomic_directory, write_text_atomic
from composer_core.models import resolve_model_folder
from composer_core.outer_loop import OuterLoop
from composer_core.plots import plot_metrics
from composer_core.replay.pairs import pairs_to_dataset, read_pairs_jsonl
from composer_core.saved_config import check_resumed_config, save_run_config
from composer_trl.console import header, quiet_loading_bars, use_compact_console
from composer_trl.defaults import EMBEDDED_MODEL
from composer_trl.evaluation import EvalSet, PeriodicEval, evaluate
from composer_trl.job_data import JobData, job_data, with_reward_weights
from composer_trl.job_targets import job_targets
from composer_trl.lora import lora_peft_config, save_trained_model
from composer_trl.model_folder import check_model_folder, load_model
from composer_trl.outer_loop import OuterLoopCallback
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
from composer_trl.targets_data import target_records
from composer_trl.trainer import ComposerGRPOTrainer
from composer_trl.trl_settings import build_grpo_config


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
    """The checked model folder: model.path (a folder, a GGUF file's cached conversion or a hub model's snapshot:
    composer_core.models), or the embedded model."""
    return check_model_folder(resolve_model_folder(config.model.path) if config.model.path else EMBEDDED_MODEL)


def run_job(config: ComposerConfig, *, output_dir: str | None = None, resume: bool = False,
            outer_loop: OuterLoop | None = None) -> dict[str, Any]:
    """Train, evaluate before and after, and write metrics.jsonl, metrics.png and summary.json.

    One run per output folder (a lock file); a folder holding an earlier run is refused unless `resume`, which
    continues it from its newest complete checkpoint. SIGINT / SIGTERM save a checkpoint and mark the summary
    interrupted (see composer_trl.stopping). `outer_loop` (a DiLoCo replica) wraps the training loop
    (composer_trl.outer_loop).
    """
    model_path = model_path_of(config)
    data = job_data(config)  # a data or reward problem stops here, before the folder is made
    if config.data.targets is not None:
        target_records(config.data.targets)  # as does a missing, empty or wrong data.targets file
    folder = output_dir or config.run.output_dir
    grpo_config = build_grpo_config(config, str(Path(folder) / CHECKPOINTS))  # refused before the folder is made
    out = prepare_output_folder(folder, inputs=[model_path])
    with GracefulStop() as stop, run_lock(out), quiet_loading_bars():
        checkpoint = None
        if resume:
            check_resumed_config(config, out)
            checkpoint = resume_point(out, config)
        else:
            refuse_previous_run(out)
        save_run_config(config, out)
        print(header(config, model=model_path, output=out, backend="trl",
                     start_step=checkpoint_step(checkpoint) if checkpoint else 0), file=sys.stderr)
        return train_in(out, config, model_path, checkpoint, stop, grpo_config, data, outer_loop=outer_loop)


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
             stop: GracefulStop, grpo_config: GRPOConfig, data: JobData, *, outer_loop: OuterLoop | None = None
             ) -> dict[str, Any]:
    """The run itself, in a locked output folder."""
    model, tokenizer = load_model(model_path)
    metrics = out / METRICS
    trainer = build_trainer(config, grpo_config, model, tokenizer, data,
                            callbacks=[MetricsFile(metrics, fresh=checkpoint is None), stop])
    if trainer.guard is not None:
        trainer.guard.report_folder = out
    if outer_loop is not None:
        trainer.add_callback(OuterLoopCallback(trainer, outer_loop))
    eval_set = data.eval_set(config.run.max_completion_length)  # after the trainer's checks: a bad job stops first
    before = before_training_eval(trainer.model, tokenizer, eval_set)
    use_compact_console(trainer)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except RunInterrupted as interrupt:
        print(f"{interrupt.signal.name} again: stopped mid-step; the model is saved as it is, the last complete "
              "checkpoint is the one to --resume from", file=sys.stderr)
    interrupted = stop.received is not None
    guard = trainer.guard.summary() if trainer.guard is not None else None
    name = "interrupted" if interrupted else "last_good" if guard and guard["stopped"] else "final"
    final = save_model(trainer, tokenizer, out / name)
    after = None if interrupted or eval_set is None else after_training_eval(trainer, tokenizer, eval_set)
    complete = [path for path in checkpoints(out) if is_complete(path)]
    summary = {"eval_reward_before": before, "eval_reward_after": after,
               "eval_prompts": len(eval_set.rows) if eval_set is not None else 0, "steps": trainer.state.global_step,
               "max_steps": config.run.max_steps, "interrupted": interrupted,
               "signal": stop.received.name if stop.received is not None else None, "model": str(final),
               "checkpoint": str(complete[-1]) if complete else None,
               "resumed_from": str(checkpoint) if checkpoint else None, "guard": guard, "metrics": str(metrics),
               "plot": str(plot_metrics(metrics, out / "metrics.png", before=before, after=after,
                                        before_step=checkpoint_step(checkpoint) if checkpoint else 0))}
    if trainer.targets is not None:  # every target used or skipped, and what the steps trained on
        summary["targets"] = trainer.targets.summary()
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2), what="run summary")
    return summary


def build_trainer(config: ComposerConfig, grpo_config: GRPOConfig, model: Any, tokenizer: Any, data: JobData, *,
                  callbacks: list[TrainerCallback], trainer_class: type[ComposerGRPOTrainer] = ComposerGRPOTrainer
                  ) -> ComposerGRPOTrainer:
    """The job's trainer: `composer-core train` and ComposerGRPOTrainer.from_config both build it here, so that a
    config means the same in Python and on the command line."""
    pairs = config.data.preference_pairs
    targets = job_targets(config, tokenizer, model)  # data.targets: agent traces on channel 2 (job_targets)
    train, reward_funcs, weights = (data.train, data.reward_funcs, data.reward_weights) if targets is None else \
        targets.joined(data.train, data.reward_funcs, data.reward_weights)
    trainer = trainer_class(model=model, reward_funcs=reward_funcs,
                            args=with_reward_weights(grpo_config, weights), train_dataset=train,
                            processing_class=tokenizer, composer_config=config, composer_sections_used=True,
                            peft_config=lora_peft_config(config.model.lora, model),
                            preference_dataset=pairs_to_dataset(read_pairs_jsonl(pairs)) if pairs else None,
                            targets=targets, callbacks=callbacks)
    eval_set = data.eval_set(config.run.max_completion_length)
    if config.run.eval_steps is not None and eval_set is not None:
        trainer.add_callback(PeriodicEval(trainer, eval_set, config.run.eval_steps))
    return trainer


def before_training_eval(model: Any, tokenizer: PreTrainedTokenizerBase, eval_set: EvalSet | None) -> float | None:
    """The eval reward before training, printed; None (and said so) when there are no held-out prompts."""
    if eval_set is None:
        print("eval: none (data.eval is not set): no held-out reward is measured", file=sys.stderr)
        return None
    before = evaluate(model, tokenizer, eval_set).mean
    print(f"eval reward before training: {before:.2f} on {len(eval_set.rows)} held-out prompts", file=sys.stderr)
    return before


def after_training_eval(trainer: ComposerGRPOTrainer, tokenizer: PreTrainedTokenizerBase,
                        eval_set: EvalSet) -> float | None:
    """The eval reward after training; None when a signal stops it (the summary then says interrupted)."""
    try:
        return evaluate(trainer.accelerator.unwrap_model(trainer.model), tokenizer, eval_set).mean
    except RunInterrupted:
        return None


def save_model(trainer: ComposerGRPOTrainer, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """The model and tokenizer for from_pretrained, swapped into `folder` only once complete."""
    with atomic_directory(folder, what="model folder") as staging:
        save_trained_model(trainer, staging)
        tokenizer.save_pretrained(staging)
    return folder
