"""What a training run prints: a header saying what is about to train, then one short line per logging step.

TRL prints every log as a dict of some thirty keys through transformers' ProgressCallback (PrinterCallback when
the progress bar is off); `use_compact_console` swaps that callback for one that writes a compact line instead,
keeping the progress bar. Every metric still reaches metrics.jsonl and the report_to integrations.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback
from transformers.utils import logging as transformers_logging

from composer_core.config import ComposerConfig
from composer_trl.evaluation import REWARD_KEY, REWARD_STD_KEY

# (log key, label, format) in the order a step line shows them; absent keys are left out
STEP_FIELDS = (("loss", "loss", ".4g"), ("reward", "reward", ".3f"), ("composer/distill/loss", "distill", ".4g"),
               ("composer/distill/coverage", "coverage", ".2f"), ("composer/preference/loss", "dpo", ".4g"),
               ("composer/policy/kl", "kl", ".3g"), ("grad_norm", "grad", ".3g"))


def channels(config: ComposerConfig) -> str:
    """The loss channels that are on, with their weights and what each is."""
    on = []
    if config.policy.weight > 0:
        kl = f", kl {config.policy.kl.coef:g} ({config.policy.kl.estimator})" if config.policy.kl.coef > 0 else ""
        on.append(f"policy x{config.policy.weight:g} ({config.policy.objective.name}{kl})")
    if config.distill.weight > 0:
        distill = config.distill
        on.append(f"self-distillation x{distill.weight:g} ({distill.divergence}, {distill.support}, "
                  f"{distill.teacher} teacher)")
    if config.preference.weight > 0 and config.preference.beta > 0:
        on.append(f"trace-replay DPO x{config.preference.weight:g} ({config.preference.loss})")
    return "; ".join(on) or "none"


def data_line(config: ComposerConfig) -> str:
    """Where the prompts (and the targets and preference pairs) come from."""
    data = config.data
    parts = [f"built-in task {data.builtin_task} ({data.train_size} rows)" if data.builtin_task
             else f"{data.train} (split {data.train_split})" if data.train else None,
             f"trace targets {data.targets} ({data.targets_mode})" if data.targets else None,
             f"preference pairs {data.preference_pairs}" if data.preference_pairs else None,
             f"eval {data.eval}" if data.eval else None]
    return "; ".join(part for part in parts if part)


def rewards_line(config: ComposerConfig) -> str:
    if not config.reward:
        return f"the built-in task's ({config.data.builtin_task})" if config.data.builtin_task else "none"
    return ", ".join(f"{reward.function} x{reward.weight:g}" for reward in config.reward)


def header(config: ComposerConfig, *, model: Path | str, output: Path, backend: str, start_step: int = 0) -> str:
    """The lines printed before training: model, objective, channels, data, rewards, output, backend, steps."""
    run = config.run
    lora = f" + LoRA r={config.model.lora.r}" if config.model.lora else ""
    steps = f"{run.max_steps} (from step {start_step})" if start_step else f"{run.max_steps}"
    rows = (("model", f"{model}{lora}"), ("objective", config.policy.objective.name), ("channels", channels(config)),
            ("data", data_line(config)), ("rewards", rewards_line(config)), ("output", str(output)),
            ("backend", f"{backend}, {run.precision}"),
            ("steps", f"{steps} x {run.prompts_per_step} prompts x {run.num_generations} samples, "
                      f"lr {run.learning_rate:g}"))
    return "\n".join(f"{name:>9}: {value}" for name, value in rows)


def step_line(logs: dict[str, Any], step: int, max_steps: int, seconds_per_step: float | None) -> str:
    """One compact line for a training log."""
    parts = [f"step {step}/{max_steps}"]
    parts += [f"{label} {logs[key]:{spec}}" for key, label, spec in STEP_FIELDS
              if isinstance(logs.get(key), float | int)]
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    return "  ".join(parts)


def other_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """A log that is not a training step (the periodic eval, the end of training): its numbers, briefly."""
    if "train_runtime" in logs:
        return f"trained to step {step} in {logs['train_runtime']:.1f} s"
    if isinstance(logs.get(REWARD_KEY), float | int):  # the job's periodic eval (composer_trl.evaluation)
        spread = logs.get(REWARD_STD_KEY)
        return f"step {step}/{max_steps}  eval reward {logs[REWARD_KEY]:.3f}" + (
            f" (std {spread:.3f} over prompts)" if isinstance(spread, float | int) else "")
    shown = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in logs.items()]
    return f"step {step}: " + "  ".join(shown)


class CompactLog:
    """Turns TRL's logs into lines, timing the steps between two logs."""

    def __init__(self) -> None:
        self.last: tuple[float, int] | None = None

    def start(self, step: int) -> None:
        self.last = (time.monotonic(), step)

    def line(self, logs: dict[str, Any], step: int, max_steps: int) -> str:
        if "loss" not in logs:
            return other_line(logs, step, max_steps)
        seconds = None
        now = time.monotonic()
        if self.last is not None and step > self.last[1]:
            seconds = (now - self.last[0]) / (step - self.last[1])
        self.last = (now, step)
        return step_line(logs, step, max_steps, seconds)


class CompactProgress(ProgressCallback):
    """transformers' progress bar, with a compact line per log instead of the whole dict."""

    def __init__(self) -> None:
        super().__init__()
        self.compact = CompactLog()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        self.compact.start(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            self.training_bar.write(self.compact.line(logs, state.global_step, state.max_steps), file=sys.stderr)


class CompactPrinter(TrainerCallback):
    """The compact lines without a progress bar (GRPOConfig.disable_tqdm)."""

    def __init__(self) -> None:
        self.compact = CompactLog()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.compact.start(state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            print(self.compact.line(logs, state.global_step, state.max_steps), file=sys.stderr, flush=True)


def use_compact_console(trainer: Any) -> None:
    """Replace the trainer's log printer (ProgressCallback or PrinterCallback) by its compact version."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress())
    elif trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(CompactPrinter())


@contextmanager
def quiet_loading_bars() -> Iterator[None]:
    """transformers' and the hub's bars (loading weights, writing shards) off while the block runs; the training
    bar is tqdm's own and stays."""
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()
