"""The main job: train a policy with the composer loss through TRL, on the embedded default or a given model.

`composer-core train` calls `run_job`: it builds the task's data, maps the ComposerConfig onto TRL's
GRPOConfig, measures the eval reward, trains with TRL's own loop (progress bar, checkpoints), writes
metrics as JSONL and a PNG plot, and measures the eval reward again. Ctrl-C saves a usable checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.replay.pairs import pairs_to_dataset, read_pairs_jsonl
from composer_core.tasks import arithmetic
from composer_trl.defaults import EMBEDDED_MODEL
from composer_trl.plots import plot_metrics
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


def native_config(config: ComposerConfig) -> str:
    """What the ComposerConfig maps to in TRL: GRPOConfig arguments, and the composer sections TRL lacks."""
    settings = grpo_settings(config, config.run.output_dir)
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
    """Appends every log TRL emits, with its step, to a JSONL file as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def load_model(config: ComposerConfig) -> tuple[Any, PreTrainedTokenizerBase]:
    path = Path(config.model.path) if config.model.path else EMBEDDED_MODEL
    if not path.is_dir():
        raise ConfigError(f"model.path {path} is not a folder with a saved model (config.json, weights, tokenizer)")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def run_job(config: ComposerConfig, *, output_dir: str | None = None) -> dict[str, Any]:
    """Train, evaluate before and after, and write metrics.jsonl, metrics.png and summary.json."""
    out = Path(output_dir or config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(config)
    eval_problems = arithmetic.make_problems(config.data.eval_size, config.run.seed, "eval")
    max_tokens = config.run.max_completion_length
    before = eval_reward(model, tokenizer, eval_problems, max_tokens)
    print(f"eval reward before training: {before:.2f} on {len(eval_problems)} held-out prompts", file=sys.stderr)
    metrics = out / "metrics.jsonl"
    pairs = config.data.preference_pairs
    trainer = ComposerGRPOTrainer(model=model, reward_funcs=arithmetic.reward_function(with_feedback=True),
                                  args=GRPOConfig(**grpo_settings(config, str(out / "checkpoints"))),
                                  train_dataset=task_dataset(config, config.data.train_size, "train"),
                                  processing_class=tokenizer, composer_config=config,
                                  preference_dataset=pairs_to_dataset(read_pairs_jsonl(pairs)) if pairs else None,
                                  callbacks=[MetricsFile(metrics)])
    interrupted = False
    try:
        trainer.train()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: saving a checkpoint", file=sys.stderr)
    final = out / ("interrupted" if interrupted else "final")
    trainer.save_model(str(final))
    tokenizer.save_pretrained(final)
    after = eval_reward(trainer.model, tokenizer, eval_problems, max_tokens)
    summary = {"eval_reward_before": before, "eval_reward_after": after, "steps": trainer.state.global_step,
               "interrupted": interrupted, "model": str(final), "metrics": str(metrics),
               "plot": str(plot_metrics(metrics, out / "metrics.png", before=before, after=after))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
