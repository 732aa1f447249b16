"""Held-out evaluation: greedy completions of the eval prompts, scored with the job's reward functions.

The eval reward is the mean over eval prompts of the weighted sum of the reward functions (as TRL sums them
in training); `eval/reward_std` is its spread over prompts. Prompts are rendered as TRL renders them: chat
messages through the tokenizer's chat template with the generation prompt, plain strings as they are. It runs
before and after training, and every `run.eval_steps` steps through `PeriodicEval`, whose rows reach every
`on_log` consumer (metrics.jsonl, TensorBoard, W&B) under `eval/reward` and `eval/reward_std`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainerCallback

from composer_core.rewards import weighted_rewards

EVAL_BATCH = 32
REWARD_KEY, REWARD_STD_KEY = "eval/reward", "eval/reward_std"


@dataclass(frozen=True)
class EvalSet:
    """The eval rows (a `prompt` column and the reward columns) and how to score them."""

    rows: Dataset
    reward_funcs: Sequence[Callable[..., Sequence[Any]]]
    reward_weights: Sequence[float]
    max_new_tokens: int


@dataclass(frozen=True)
class EvalResult:
    """The eval reward's mean and its spread over the eval prompts."""

    mean: float
    std: float

    def metrics(self) -> dict[str, float]:
        return {REWARD_KEY: self.mean, REWARD_STD_KEY: self.std}


@torch.no_grad()
def evaluate(model: Any, tokenizer: PreTrainedTokenizerBase, eval_set: EvalSet) -> EvalResult:
    """The weighted reward of greedy completions on every eval row; the model's train/eval mode is restored."""
    training = model.training
    model.eval()
    scores: list[float] = []
    try:
        for start in range(0, len(eval_set.rows), EVAL_BATCH):
            batch = eval_set.rows.select(range(start, min(start + EVAL_BATCH, len(eval_set.rows))))
            scores.extend(_score_batch(model, tokenizer, batch, eval_set))
    finally:
        model.train(training)
    return EvalResult(statistics.fmean(scores), statistics.pstdev(scores))


def _score_batch(model: Any, tokenizer: PreTrainedTokenizerBase, batch: Dataset, eval_set: EvalSet) -> list[float]:
    prompts = list(batch["prompt"])
    conversational = isinstance(prompts[0], list)
    if conversational:
        texts = [tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                 for prompt in prompts]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    else:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    encoded = encoded.to(model.device)
    generated = model.generate(**encoded, max_new_tokens=eval_set.max_new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
    new_tokens = generated[:, encoded["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    completions: list[Any] = [[{"role": "assistant", "content": text}] for text in texts] if conversational \
        else texts
    completion_ids = [[token for token in row if token != tokenizer.pad_token_id] for row in new_tokens.tolist()]
    columns = {name: batch[name] for name in batch.column_names if name != "prompt"}
    return weighted_rewards(eval_set.reward_funcs, eval_set.reward_weights, prompts=prompts, completions=completions,
                            columns=columns, completion_ids=completion_ids)


class PeriodicEval(TrainerCallback):
    """Evaluates every `every` optimizer steps and hands the result to the trainer's `on_log` callbacks, as a log
    row of its own (not merged into TRL's training metrics)."""

    def __init__(self, trainer: Any, eval_set: EvalSet, every: int) -> None:
        self.trainer = trainer
        self.eval_set = eval_set
        self.every = every

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every or not state.is_world_process_zero:
            return
        trainer = self.trainer
        result = evaluate(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, self.eval_set)
        logs = result.metrics()
        state.log_history.append({**logs, "step": state.global_step})
        should_log = control.should_log  # the handler clears it, which would drop this step's training log
        trainer.callback_handler.on_log(args, state, control, logs)
        control.should_log = should_log
