"""GRPO with the composer loss, as a torchtune recipe: `tune run composer_torchtune/recipes/composer_grpo.py
--config <yaml>` (one process), or with `--nproc_per_node N` (torchrun: data parallel, gloo on CPU).

Each step takes `prompts_per_step` prompts (the global batch; each rank a slice), samples `num_generations`
completions per prompt with the policy, scores them with the `reward_fn` component, computes advantages from the
rewards of all ranks (`advantage` component), builds self-distillation teacher contexts with
composer_core.selfteach (when a `self_distillation` section is present) and trains with the `loss` component,
which keeps torchtune's GRPO loss contract (composer_torchtune.loss). Gradients are averaged over ranks; the
training guard (`guard` section, composer_core.guard) judges each step before the optimizer applies it.
Checkpoints go through the `checkpointer` component (torchtune's Hugging Face checkpointer), so the saved
folders load back with it and with `transformers`. Sampling is seeded per global sample, so N processes and
one process with the same global batch train the same weights (up to float rounding).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config, training, utils
from torchtune.recipe_interfaces import FTRecipeInterface

from composer_core.guard import GUARD_EXIT_CODE, Guard, GuardConfig
from composer_core.guard.good_state import GoodState
from composer_core.readout import Readout
from composer_core.selfteach import RepromptSettings
from composer_torchtune import distributed
from composer_torchtune.model_folder import embedded_model
from composer_torchtune.normalisers import loss_normalisers
from composer_torchtune.rewards import score
from composer_torchtune.sampling import completion_mask, generate, left_pad, sample_generators
from composer_torchtune.sequences import completion_logits, token_logprobs
from composer_torchtune.teacher import TeacherWeights, teacher_rows

log = utils.get_logger("INFO")
# `${composer_torchtune:embedded_model}` in a YAML names the embedded default model's folder
if not OmegaConf.has_resolver("composer_torchtune"):
    OmegaConf.register_new_resolver("composer_torchtune", lambda name: str({"embedded_model": embedded_model}[name]()))


@dataclass
class Rollout:
    """One rank's slice of a step: prompts, completions and everything the loss needs from the sampling pass."""

    prompts: torch.Tensor
    completions: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor | None
    advantages: torch.Tensor
    teacher_logits: torch.Tensor | None
    distill_mask: torch.Tensor | None
    metrics: dict[str, float]


class ComposerGRPORecipe(FTRecipeInterface):
    """Full fine-tuning with GRPO-style sampling and the composer loss; see the module docstring."""

    def __init__(self, cfg: DictConfig) -> None:
        self.device = utils.get_device(device=cfg.get("device", "cpu"))
        self.dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self.device)
        self.world_size, self.rank = distributed.start(self.device)
        self.is_rank_zero = self.rank == 0
        self.seed = int(cfg.seed)
        training.set_seed(seed=self.seed)
        self.output_dir = Path(cfg.output_dir)
        self.num_steps = int(cfg.num_steps)
        self.prompts_per_step = int(cfg.prompts_per_step)
        if self.prompts_per_step % self.world_size:
            raise ValueError(f"prompts_per_step={self.prompts_per_step} must be a multiple of the number of "
                             f"processes ({self.world_size}): each rank samples whole groups")
        self.local_prompts = self.prompts_per_step // self.world_size
        self.num_generations = int(cfg.num_generations)
        self.max_new_tokens = int(cfg.max_generated_tokens)
        self.temperature = float(cfg.get("temperature", 1.0))
        self.top_k = cfg.get("top_k", None)
        self.clip_grad_norm = cfg.get("clip_grad_norm", None)
        self.save_every = int(cfg.get("save_every_n_steps", self.num_steps))
        self.step = 0

    def setup(self, cfg: DictConfig) -> None:
        """Checkpointer, model, tokenizer, optimizer, loss, reward, advantages, data, teacher, guard."""
        self.metric_logger = config.instantiate(cfg.metric_logger) if self.is_rank_zero else None
        if self.metric_logger is not None:
            self.metric_logger.log_config(cfg)
        self.checkpointer = config.instantiate(cfg.checkpointer)
        self.checkpoint_dir = Path(cfg.checkpointer.output_dir)
        state = self.checkpointer.load_checkpoint()[training.MODEL_KEY]
        self.model = self.build_model(cfg.model, state)
        self.tokenizer = config.instantiate(cfg.tokenizer)
        self.optimizer = config.instantiate(cfg.optimizer, self.model.parameters())
        self.loss_fn = config.instantiate(cfg.loss)
        self.reward_fn = config.instantiate(cfg.reward_fn)
        self.advantage = config.instantiate(cfg.advantage)
        self.rows = list(config.instantiate(cfg.dataset))
        self.eval_rows = list(config.instantiate(cfg.eval_dataset)) if cfg.get("eval_dataset") else []
        self.reference = self.build_model(cfg.model, state).requires_grad_(False).eval() \
            if kl_coefficient(self.loss_fn) > 0 else None
        distill = cfg.get("self_distillation", None)
        self.teacher = None if distill is None else TeacherWeights(self.model, distill.get("teacher", "ema"),
                                                                   float(distill.get("rate", 0.05)))
        self.reprompt = RepromptSettings(**OmegaConf.to_container(distill.get("reprompt", {}))) \
            if distill is not None else None
        guard = cfg.get("guard", None)
        self.guard = Guard(GuardConfig(**OmegaConf.to_container(guard))) if guard is not None else None
        self.good_state = GoodState()
        utils.log_rank_zero(log, f"composer GRPO: {self.world_size} process(es), {self.local_prompts} prompt(s) x "
                                 f"{self.num_generations} per rank per step, {self.num_steps} steps")

    def build_model(self, cfg_model: DictConfig, state: dict[str, Any]) -> torch.nn.Module:
        """The component-built model with the checkpoint's weights, on the device, without dropout."""
        with training.set_default_dtype(self.dtype), self.device:
            model = config.instantiate(cfg_model)
        model.load_state_dict(state, strict=True)
        training.disable_dropout(model)
        return model

    def batch_rows(self, step: int) -> tuple[list[dict[str, Any]], list[int]]:
        """This rank's prompt rows of `step` and their positions in the global batch."""
        start = step * self.prompts_per_step + self.rank * self.local_prompts
        positions = [self.rank * self.local_prompts + index for index in range(self.local_prompts)]
        return [self.rows[(start + index) % len(self.rows)] for index in range(self.local_prompts)], positions

    def rollout(self, step: int) -> Rollout:
        """Sample, score and prepare one step's batch on this rank."""
        rows, positions = self.batch_rows(step)
        group = self.num_generations
        samples = [row for row in rows for _ in range(group)]
        groups = [position for position in positions for _ in range(group)]
        prompt_ids = [self.tokenizer.encode_messages(row["prompt"]) for row in samples]
        prompts = left_pad(prompt_ids, self.tokenizer.pad_id).to(self.device)
        generators = sample_generators(self.seed, step, [g * group + j for g in positions for j in range(group)],
                                       self.device)
        self.model.eval()
        completions = generate(self.model, prompts, pad_id=self.tokenizer.pad_id, stop_ids=self.tokenizer.stop_tokens,
                               max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                               generators=generators)
        mask = completion_mask(completions, self.tokenizer.stop_tokens)
        stops = torch.tensor(self.tokenizer.stop_tokens, device=self.device)
        texts = [self.tokenizer.decode(row[keep].tolist()) for row, keep in zip(completions, mask, strict=True)]
        columns = {key: [row.get(key) for row in samples] for key in samples[0] if key != "prompt"}
        scored = score(self.reward_fn, [row["prompt"] for row in samples], texts, columns)
        rewards = torch.tensor([item.reward for item in scored], device=self.device)
        all_rewards = distributed.gather(rewards)
        all_groups = distributed.gather(torch.tensor(groups, device=self.device))
        advantages = self.advantage(all_rewards, all_groups).view(self.world_size, -1)[self.rank]
        with torch.no_grad():
            old = token_logprobs(self.logits(self.model, prompts, completions), completions, self.temperature)
            ref = None if self.reference is None else token_logprobs(
                self.logits(self.reference, prompts, completions), completions, self.temperature)
        teacher_logits, distill_mask, context_metrics = None, None, {}
        if self.teacher is not None:
            rows_t = teacher_rows(self.tokenizer, [row["prompt"] for row in samples], texts, groups,
                                  [item.reward for item in scored], [item.feedback for item in scored],
                                  columns.get("hint"), self.reprompt, prompt_ids)
            teacher_prompts = rows_t.prompts.to(self.device)
            teacher_logits = self.teacher.logits(lambda model: self.logits(model, teacher_prompts, completions))
            distill_mask = mask & rows_t.has_context.to(self.device)[:, None]
            context_metrics = rows_t.counts.metrics()
        self.model.train()
        local = {"response_length": mask.sum(-1).float().mean(),
                 "truncated_fraction": (mask[:, -1] & ~torch.isin(completions[:, -1], stops)).float().mean(),
                 **{key: torch.tensor(value) for key, value in context_metrics.items()}}
        metrics = {"reward_mean": all_rewards.mean().item(), "reward_std": all_rewards.std().item(),
                   "zero_std_fraction": zero_std_fraction(all_rewards, all_groups),
                   **distributed.mean_values(local, self.device)}
        return Rollout(prompts, completions, mask, old, ref, advantages, teacher_logits, distill_mask, metrics)

    def logits(self, model: torch.nn.Module, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        return completion_logits(model, prompts, completions, self.tokenizer.pad_id)

    def loss(self, batch: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss component on the policy's current log-probs (and logits, for self-distillation)."""
        logits = self.logits(self.model, batch.prompts, batch.completions)
        logprobs = token_logprobs(logits, batch.completions, self.temperature)
        extra = {} if self.teacher is None else {"student_logits": logits, "teacher_logits": batch.teacher_logits,
                                                 "distill_mask": batch.distill_mask, "token_ids": batch.completions}
        extra.update(loss_normalisers(self.loss_fn, batch.mask, batch.distill_mask, self.max_new_tokens,
                                      self.world_size))
        loss, policy_loss, kl_loss, ratios, clipfrac = self.loss_fn(
            batch.old_logprobs, logprobs, batch.ref_logprobs, batch.advantages, batch.mask, **extra)
        readout = Readout()  # one device read for the five, not one each
        readout.add(loss=loss, policy_loss=policy_loss, kl=kl_loss, ratios=ratios, clip_fraction=clipfrac)
        metrics = {**readout.read(),
                   **{key: float(value) for key, value in getattr(self.loss_fn, "metrics", {}).items()}}
        return loss, metrics

    @torch.no_grad()
    def evaluate(self) -> None:
        """Rank 0 logs `eval_reward`, the mean reward of greedy completions of the `eval_dataset` rows."""
        if not self.eval_rows or self.metric_logger is None:
            return
        self.model.eval()
        ids = [self.tokenizer.encode_messages(row["prompt"]) for row in self.eval_rows]
        completions = generate(self.model, left_pad(ids, self.tokenizer.pad_id).to(self.device),
                               pad_id=self.tokenizer.pad_id, stop_ids=self.tokenizer.stop_tokens,
                               max_new_tokens=self.max_new_tokens, temperature=0.0, top_k=None, generators=[])
        mask = completion_mask(completions, self.tokenizer.stop_tokens)
        texts = [self.tokenizer.decode(row[keep].tolist()) for row, keep in zip(completions, mask, strict=True)]
        columns = {key: [row.get(key) for row in self.eval_rows] for key in self.eval_rows[0] if key != "prompt"}
        scored = score(self.reward_fn, [row["prompt"] for row in self.eval_rows], texts, columns)
        self.metric_logger.log_dict({"eval_reward": sum(item.reward for item in scored) / len(scored)}, self.step)
        self.model.train()

    def train(self) -> None:
        """The step loop: rollout, loss, backward, gradient average, guard, optimizer step, log, checkpoint; the
        eval reward before the first step and after the last."""
        self.evaluate()
        while self.step < self.num_steps:
            started = time.perf_counter()
            batch = self.rollout(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss, metrics = self.loss(batch)
            loss.backward()
            distributed.average_gradients(self.model)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.clip_grad_norm or math.inf))
            metrics = distributed.mean_values(metrics, self.device)
            metrics.update(batch.metrics, grad_norm=norm.item(), lr=training.get_lr(self.optimizer))
            if self.guard_stops(metrics):
                return
            if math.isfinite(metrics["grad_norm"]):
                self.optimizer.step()
                if self.teacher is not None:
                    self.teacher.after_step()
            self.step += 1
            metrics["step_seconds"] = time.perf_counter() - started
            if self.metric_logger is not None:
                self.metric_logger.log_dict(metrics, step=self.step)
            if self.step % self.save_every == 0 or self.step == self.num_steps:
                self.save_checkpoint(self.step)
        self.evaluate()

    def guard_stops(self, metrics: dict[str, float]) -> bool:
        """Judge the step before its update: a non-finite gradient skips it; a healthy step keeps the weights it
        started from as the last good state (every guard.snapshot_every steps); a stop (or rollback, which this
        recipe does not implement) saves that state through the checkpointer and ends the run with exit code 3."""
        if self.guard is None:
            return False
        step = self.step + 1
        if not math.isfinite(metrics["grad_norm"]):
            self.guard.skipped(step, f"grad_norm is {metrics['grad_norm']}: the optimizer step was not applied")
        decision = self.guard.observe(step, metrics)
        metrics.update(decision.metrics())
        for line in decision.lines():
            utils.log_rank_zero(log, line)
        if decision.action not in ("stop", "rollback"):
            if decision.healthy and self.step % self.guard.config.snapshot_every == 0:
                self.good_state.capture(self.step, 1.0, self.model)  # the weights; a stop needs nothing more
                self.guard.kept_good_state(self.step)
            return False
        kept = self.good_state.step >= 0
        if kept:  # rollback is not implemented here: it stops like `stop`
            self.good_state.restore_weights(self.model)
        folder = self.save_checkpoint(self.good_state.step if kept else self.step)
        self.guard.stopped(decision, str(folder))
        if self.is_rank_zero:
            self.guard.write_report(self.output_dir)
        self.exit_code = GUARD_EXIT_CODE
        return True

    def save_checkpoint(self, step: int) -> Path:
        """The model in Hugging Face format through the checkpointer, in `<checkpointer.output_dir>/epoch_<step>`
        (torchtune names checkpoint folders by epoch; here one "epoch" is one step)."""
        if self.is_rank_zero:
            state = {key: value.detach().cpu() for key, value in self.model.state_dict().items()}
            self.checkpointer.save_checkpoint({training.MODEL_KEY: state}, epoch=step, intermediate_checkpoint=False)
        distributed.barrier()
        return Path(self.checkpoint_dir) / f"epoch_{step}"

    def cleanup(self) -> None:
        if self.metric_logger is not None:
            self.metric_logger.close()
        distributed.stop()

    exit_code = 0


def kl_coefficient(loss_fn: Any) -> float:
    """The loss's KL weight: a composer component's `policy.kl.coef` (in the loss), else torchtune's `kl_coeff`."""
    composer = getattr(loss_fn, "config", None)
    if composer is None:
        return float(getattr(loss_fn, "kl_coeff", 0.0))
    kl = composer.policy.kl
    if kl.coef > 0 and kl.placement == "reward":
        raise ValueError("kl_placement 'reward' (KL in the reward) is not supported by the composer torchtune "
                         "recipe: use kl_placement 'loss'")
    return kl.coef


def zero_std_fraction(rewards: torch.Tensor, groups: torch.Tensor) -> float:
    """The fraction of prompt groups whose rewards are all equal (no learning signal)."""
    flat = [rewards[groups == group] for group in torch.unique(groups)]
    return sum(float(values.max() == values.min()) for values in flat) / max(len(flat), 1)


@config.parse
def recipe_main(cfg: DictConfig) -> int:
    """Entry point: `tune run composer_torchtune/recipes/composer_grpo.py --config <yaml> [key=value ...]`."""
    config.log_config(recipe_name="ComposerGRPORecipe", cfg=cfg)
    recipe = ComposerGRPORecipe(cfg=cfg)
    recipe.setup(cfg=cfg)
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe.exit_code


if __name__ == "__main__":
    sys.exit(recipe_main())
