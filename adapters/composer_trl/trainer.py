"""`ComposerGRPOTrainer`: TRL's GRPOTrainer with composer-core's loss.

It takes GRPOTrainer's arguments plus an optional `composer_config`. Without one it follows
`GRPOConfig.loss_type` through the composer objectives (and gives TRL's loss and gradients); with one it
uses any registered objective, advantage estimator and KL placement, and channels 2 (self-distillation)
and 3 (preference pairs) when their weights are positive. TRL's generation, scoring, batching and
distributed engine are used as they are: the subclass only adds tensors to the scored batch and replaces
the loss.
"""

from __future__ import annotations

import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer

from composer_core import (
    ComposerConfig,
    ComposerLoss,
    DistillInputs,
    Normaliser,
    PolicyInputs,
    PreferenceBatch,
    compute_advantages,
)
from composer_core.distill import token_log_probs
from composer_core.errors import ConfigError, NonFiniteError
from composer_core.files import atomic_output
from composer_core.guard import Guard
from composer_core.objectives.kl import kl_estimate
from composer_core.selfteach import RepromptSettings, build_teacher_contexts
from composer_trl.feedback import FeedbackRecorder
from composer_trl.grpo_mapping import composer_config_from_grpo, grpo_overrides, trl_normaliser
from composer_trl.guard_callback import TrainingGuard, is_non_finite_sampling
from composer_trl.lora import student_adapter_only
from composer_trl.preference_mixer import PreferenceMixer, preference_batch
from composer_trl.prompt_length import TRUNCATED_METRIC, truncate_prompt_ids
from composer_trl.run_folder import COMPOSER_STATE
from composer_trl.teacher_context import TeacherBatch, pad_id, tokenize_teacher_batch
from composer_trl.teacher_weights import TeacherWeights, frozen_copy
from composer_trl.trainer_from_config import trainer_from_config, warn_unused_sections

if TYPE_CHECKING:  # the targets modules render chat messages; the trainer only calls what it is handed
    from composer_trl.job_targets import JobTargets
    from composer_trl.off_policy_distill import OffPolicyTargets

UNSUPPORTED_TRL_SETTINGS = {  # TRL features that live inside TRL's own loss, which this trainer replaces
    "top_entropy_quantile": 1.0, "off_policy_mask_threshold": None, "entropy_coef": 0.0,
    "use_adaptive_entropy": False, "delta": None,
}


def allow_empty_rows(config: ComposerConfig) -> ComposerConfig:
    """The config with policy.allow_empty_rows on (TRL's mask_truncated_completions empties whole rows of the policy
    mask, and so do on-policy target rows), re-validated as a whole rather than patched past validation."""
    data = config.model_dump(mode="json")
    data["policy"]["allow_empty_rows"] = True
    return ComposerConfig.from_mapping(data, source="composer_config with rows left out of the policy mask")


@dataclass(frozen=True)
class Scoring:
    """What TRL scored in the current generation round, kept for advantages and teacher contexts."""

    inputs: list[dict[str, Any]]
    prompts: list[Any]
    completions: list[Any]
    rewards_per_func: torch.Tensor
    feedback: list[str | None]


def teacher_fields(batch: TeacherBatch, sd_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher rows as scored-batch tensors (one row per completion, so TRL shuffles and splits them with the
    rest), the prefix groups included when the batch has them."""
    fields = {"teacher_input_ids": batch.input_ids, "teacher_attention_mask": batch.attention_mask, "sd_mask": sd_mask}
    if batch.prefix_group is not None and batch.prefix_length is not None:
        fields.update(teacher_prefix_group=batch.prefix_group, teacher_prefix_length=batch.prefix_length)
    return fields


class ComposerCheckpoint(TrainerCallback):
    """Writes what TRL's checkpoint lacks into it: the self-distillation teacher's weights (EMA state) and where
    the preference pairs' and off-policy targets' cycles stand, so that `train(resume_from_checkpoint=...)`
    restores them too."""

    def __init__(self, trainer: ComposerGRPOTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.trainer.save_composer_state(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class TeacherUpdate(TrainerCallback):
    """Moves the self-distillation teacher after every optimizer step (only ema moves)."""

    def __init__(self, trainer: ComposerGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        assert trainer.teacher is not None
        trainer.teacher.after_step(trainer.accelerator.unwrap_model(trainer.model))


class ComposerGRPOTrainer(GRPOTrainer):
    """A drop-in GRPOTrainer whose loss is composer-core's three-channel loss.

    preference_dataset: preference pairs (TRL's conversational prompt/chosen/rejected columns) mixed into
    every step when the preference channel is on; the reference is TRL's reference model when beta > 0,
    the disabled adapter of a PEFT model, else a frozen copy made here.

    targets: agent-trace self-distillation targets (composer_trl.job_targets): on-policy, their rows in
    train_dataset (JobTargets.joined) are generated on and distilled, outside the policy channel; off-policy, a
    batch of them is distilled teacher-forced every step.
    """

    def __init__(self, model: Any, reward_funcs: Any = None, args: Any = None, *positional: Any,
                 composer_config: ComposerConfig | None = None, preference_dataset: Any = None,
                 targets: JobTargets | None = None, composer_sections_used: bool = False, **kwargs: Any) -> None:
        if composer_config is not None and not composer_sections_used:  # from_config uses them: no warning
            warn_unused_sections(composer_config)
        self.feedback = FeedbackRecorder()
        self.targets = targets
        self.on_policy_targets = targets.on_policy if targets is not None else None
        if self.on_policy_targets is not None:
            reward_funcs = self.on_policy_targets.wrap_rewards(reward_funcs)
        super().__init__(model, self.feedback.wrap(reward_funcs), args, *positional, **kwargs)
        self.explicit_config = composer_config is not None
        config = composer_config or composer_config_from_grpo(self.args)
        self._check_trl_settings(config)
        empty_rows = self.args.mask_truncated_completions or self.on_policy_targets is not None
        if empty_rows and not config.policy.allow_empty_rows:
            config = allow_empty_rows(config)
        self.composer_config = config
        self.composer_loss = ComposerLoss(config)
        self._preflight_rewards()
        self._preflight_prompts()
        self.scoring: Scoring | None = None
        self.teacher: TeacherWeights | None = None
        self.preference: PreferenceMixer | None = None
        self.preference_reference: Any = None
        self.off_policy_targets: OffPolicyTargets | None = None
        if targets is not None and not self.composer_loss.enabled["distill"]:
            raise ConfigError("targets train the self-distillation channel, which is off: set distill.weight > 0")
        if self.on_policy_targets is not None:
            self.on_policy_targets.check_dataset(self.train_dataset)
        if self.composer_loss.enabled["distill"]:
            self.reprompt = RepromptSettings(**config.distill.context)
            student = self.accelerator.unwrap_model(self.model)
            self.teacher = TeacherWeights.from_config(config.distill.teacher, student, config.distill.teacher_rate,
                                                      reference=self.ref_model)
            self.add_callback(TeacherUpdate(self))
            if targets is not None:
                self.off_policy_targets = targets.off_policy(batch_size=self._prompts_per_batch(),
                                                             pad=pad_id(self.processing_class), seed=self.args.seed)
        if self.composer_loss.enabled["preference"]:
            self._setup_preference(preference_dataset)
        elif preference_dataset is not None:
            raise ConfigError("a preference_dataset was given but the preference channel is off (weight or beta 0)")
        self.add_callback(ComposerCheckpoint(self))
        self.guard = TrainingGuard(self, Guard(config.guard)) if self.explicit_config and config.guard.enabled \
            else None
        if self.guard is not None:
            self.add_callback(self.guard)

    @classmethod
    def from_config(cls, config: ComposerConfig, model: Any = None, tokenizer: Any = None,
                    **grpo_arguments: Any) -> ComposerGRPOTrainer:
        """The trainer `composer-core train` builds for `config`: model (model.path or the embedded one, unless
        `model` is given), data, reward functions and GRPOConfig (`grpo_arguments` replace its arguments)."""
        return trainer_from_config(cls, config, model, tokenizer, **grpo_arguments)

    # ---- checkpoints: TRL's own, plus the composer state it does not know about ------------------------------------

    def composer_state(self) -> dict[str, Any]:
        """The teacher's weights and the preference and off-policy targets cycles' positions (None where that part
        is off)."""
        return {"teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "targets": self.off_policy_targets.state_dict() if self.off_policy_targets is not None else None,
                "preference": self.preference.state_dict() if self.preference is not None else None}

    def save_composer_state(self, checkpoint: Path, state: dict[str, Any] | None = None) -> None:
        """Write `state` (default: `composer_state()`) into a checkpoint folder, atomically."""
        with atomic_output(checkpoint / COMPOSER_STATE, what="composer checkpoint state", binary=True) as stream:
            torch.save(self.composer_state() if state is None else state, stream)

    def load_composer_state(self, checkpoint: Path) -> None:
        """Restore the teacher and the preference and targets cycles from a checkpoint written by this trainer."""
        path = checkpoint / COMPOSER_STATE
        if not path.is_file():
            raise ConfigError(f"checkpoint {checkpoint} has no {COMPOSER_STATE} (the self-distillation teacher's "
                              "weights and the preference pairs' and targets' positions): it was not written by "
                              "ComposerGRPOTrainer or its saving was cut short; resume from another checkpoint")
        try:
            state = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as error:
            raise ConfigError(f"cannot read {path}: {error}; resume from another checkpoint") from None
        for part, holder, what in (("teacher", self.teacher, "the self-distillation teacher"),
                                   ("preference", self.preference, "preference pairs"),
                                   ("targets", self.off_policy_targets, "off-policy targets")):
            if (state.get(part) is None) != (holder is None):
                raise ConfigError(f"checkpoint {checkpoint} was saved {'without' if holder is not None else 'with'} "
                                  f"{what}; resume with the configuration it was trained with")
            if holder is not None:
                holder.load_state_dict(state[part])

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
        """TRL's save; a LoRA checkpoint holds the student adapter only (see composer_trl.lora)."""
        with student_adapter_only(self.accelerator.unwrap_model(self.model)):
            super()._save(output_dir, state_dict)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """TRL's train; resuming also restores the composer state saved with the checkpoint."""
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ConfigError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint")
            self.load_composer_state(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- the training guard's view of each step --------------------------------------------------------------------

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        """TRL's step. With the guard on, a non-finite loss (or sampling from diverged weights) is reported to it
        as a NaN loss instead of ending the run, and the guard does not apply the step."""
        if self.guard is None:
            return super().training_step(model, inputs, num_items_in_batch)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except NonFiniteError as error:
            print(f"step {self.state.global_step + 1}: {error}", file=sys.stderr)
            loss = torch.tensor(math.nan)
        self.guard.record_loss(loss)
        return loss

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.guard is not None:
            self.guard.record_grad_norm(grad_norm)
        return grad_norm

    # ---- set-up: checks before any step, and the preference channel ------------------------------------------------

    def _preflight_prompts(self) -> None:
        """Chat-message prompts need the tokenizer's chat template, and self-distillation builds the teacher's context
        from chat messages: either missing stops here, before any step, rather than at the first generation or
        teacher pass."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "column_names"):
            return
        first = dataset[0].get("prompt")
        if isinstance(first, list) and getattr(self.processing_class, "chat_template", None) is None:
            raise ConfigError("the training prompts are chat messages but the tokenizer has no chat template: give "
                              "prompts as plain strings, or a model whose tokenizer has one (tokenizer.chat_template)")
        if self.composer_loss.enabled["distill"] and not isinstance(first, list):
            raise ConfigError(f"self-distillation builds the teacher's context from chat messages, but the training "
                              f"prompts are plain strings (the first: {str(first)[:60]!r}): give each prompt as a list "
                              "of chat messages ([{role: user, content: ...}]), or turn self-distillation off "
                              "(distill.weight: 0)")

    def _preflight_rewards(self) -> None:
        """Score two dataset rows with placeholder completions before any step: a reward function that raises,
        returns the wrong number of rewards or NaN, or a data set without a `prompt` column stops here."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "column_names"):
            return
        if "prompt" not in dataset.column_names:
            raise ConfigError(f"the training data set has no 'prompt' column; columns: {dataset.column_names}")
        if len(dataset) == 0:
            raise ConfigError("the training data set has no rows")
        rows = [dataset[index] for index in range(min(2, len(dataset)))]
        prompts = [row["prompt"] for row in rows]
        conversational = isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": ""}] if conversational else "" for _ in rows]
        columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
        for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True):
            if not callable(func) or hasattr(func, "forward"):
                continue
            self.feedback.reset(len(rows))
            rewards = func(prompts=prompts, completions=completions, completion_ids=[[] for _ in rows],
                           trainer_state=self.state, log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None,
                           **columns)
            if len(rewards) != len(rows):
                raise ConfigError(f"reward function {name!r} returned {len(rewards)} rewards for {len(rows)} "
                                  "completions; it must return one per completion")

    def _prompts_per_batch(self) -> int:
        """How many preference pairs or off-policy targets each step mixes in: one per prompt of the batch."""
        return max(self.args.per_device_train_batch_size // self.num_generations, 1)

    def _setup_preference(self, dataset: Any) -> None:
        if dataset is None:
            raise ConfigError("the preference channel is on: pass preference_dataset (prompt/chosen/rejected)")
        self.preference = PreferenceMixer(dataset, self.processing_class, batch_size=self._prompts_per_batch(),
                                          seed=self.args.seed)
        student = self.accelerator.unwrap_model(self.model)
        if self.ref_model is not None:
            self.preference_reference = self.ref_model
        elif not hasattr(student, "disable_adapter"):
            self.preference_reference = frozen_copy(student)

    def _check_trl_settings(self, config: ComposerConfig) -> None:
        """Refuse TRL settings the composer loss would silently ignore, and a GRPOConfig that disagrees."""
        for name, default in UNSUPPORTED_TRL_SETTINGS.items():
            if getattr(self.args, name, default) != default:
                raise ConfigError(f"GRPOConfig.{name}={getattr(self.args, name)!r} acts inside TRL's own loss, which "
                                  f"ComposerGRPOTrainer replaces; leave it at {default!r}")
        for name, wanted in grpo_overrides(config).items():
            if getattr(self.args, name) != wanted:
                raise ConfigError(f"GRPOConfig.{name}={getattr(self.args, name)!r} but the composer config needs "
                                  f"{wanted!r}; set it in GRPOConfig (see `composer-core train "
                                  "--print-backend-config`)")

    # ---- generation and scoring: keep what the teacher contexts and the composer advantages need -------------------

    def _tokenize_prompts(self, prompts: list[Any]) -> Any:
        """TRL's prompt tokens, cut to run.max_prompt_length when it is set (composer_trl.prompt_length)."""
        tokenize = super()._tokenize_prompts
        if self.on_policy_targets is not None:  # target rows: their rendered student contexts (target_rows)
            prompt_ids, images, multimodal_fields = self.on_policy_targets.tokenize_prompts(prompts, tokenize)
        else:
            prompt_ids, images, multimodal_fields = tokenize(prompts)
        limit = self.composer_config.run.max_prompt_length
        if limit is not None:
            prompt_ids, fraction = truncate_prompt_ids(prompt_ids, limit, multimodal_fields)
            self._metrics["train" if self.model.training else "eval"][TRUNCATED_METRIC].append(fraction)
        return prompt_ids, images, multimodal_fields

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        """TRL's rewards, kept with the feedback the reward functions gave (`Scoring`)."""
        self.feedback.reset(len(prompts))
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.scoring = Scoring(inputs, prompts, completions, rewards_per_func, list(self.feedback.feedback))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        """TRL's scored batch plus what the composer loss reads: the composer advantages (with a composer_config),
        the target rows' mask and zero advantages, and the teacher's rows."""
        if self.on_policy_targets is not None:
            self.on_policy_targets.begin_batch(inputs)
        try:
            output = super()._generate_and_score_completions(inputs)
        except RuntimeError as error:
            if self.guard is None or not is_non_finite_sampling(error):
                raise
            raise NonFiniteError(f"sampling met non-finite probabilities: {error}") from error
        if self.explicit_config:
            output["advantages"] = self._composer_advantages(output)
        if self.on_policy_targets is not None:
            output.update(self._without_target_rows(output))
        if self.teacher is not None:
            output.update(self._teacher_rows(output))
        return output

    def _all_rewards(self) -> torch.Tensor:
        """The weighted reward of every completion of every process, as TRL sums its reward functions."""
        assert self.scoring is not None
        per_func = self.scoring.rewards_per_func
        return (per_func * self.reward_weights.to(per_func.device)).nansum(dim=1)

    def _local(self, values: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor over every process's completions."""
        assert self.scoring is not None
        local = len(self.scoring.prompts)
        start = self.accelerator.process_index * local
        return values[start:start + local]

    def _teacher_rows(self, output: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Teacher contexts from the raw chat messages (siblings' solutions, feedback, hints) and the teacher's
        token rows: its prompt followed by the student's own completion ids."""
        scoring = self.scoring
        assert scoring is not None
        if not isinstance(scoring.prompts[0], list):
            raise ConfigError("self-distillation needs conversational prompts (lists of chat messages)")
        completions = [completion[-1]["content"] if isinstance(completion, list) else completion
                       for completion in scoring.completions]
        groups = [index // self.num_generations for index in range(len(completions))]
        hints = [row.get("hint") for row in scoring.inputs]
        rewards = self._local(self._all_rewards()).tolist()
        if "target_rows" in output:  # agent-trace target rows bring their own teacher context (target_rows)
            return self._teacher_rows_with_targets(output, completions, groups, rewards, hints)
        contexts = build_teacher_contexts(scoring.prompts, completions, groups, rewards, scoring.feedback, hints,
                                          self.reprompt)
        mode = "train" if self.model.training else "eval"
        for name, value in contexts.counts.metrics(prefix="composer/teacher/").items():
            self._metrics[mode][name].append(value)
        batch = tokenize_teacher_batch(self.processing_class, scoring.prompts, contexts.contexts,
                                       output["completion_ids"], output["completion_mask"], self.reprompt,
                                       self.chat_template_kwargs)
        return teacher_fields(batch, batch.sd_mask * self._loss_mask(output))

    def _teacher_rows_with_targets(self, output: dict[str, Any], completions: list[str], groups: list[int],
                                   rewards: list[float], hints: list[Any]) -> dict[str, torch.Tensor]:
        """Teacher rows of a batch holding target rows: the RL rows' contexts built from their own rows only (the
        context metrics count those), the target rows' hinted contexts from the targets file."""
        assert self.scoring is not None and self.on_policy_targets is not None
        scoring, rows = self.scoring, output["target_rows"]
        kept = [index for index, target in enumerate(rows.tolist()) if not target]

        def pick(values: list[Any]) -> list[Any]:
            return [values[index] for index in kept]

        contexts = build_teacher_contexts(pick(scoring.prompts), pick(completions), pick(groups), pick(rewards),
                                          pick(scoring.feedback), pick(hints), self.reprompt)
        by_row: list[Any] = [None] * len(completions)
        for index, context in zip(kept, contexts.contexts, strict=True):
            by_row[index] = context
        batch = self.on_policy_targets.teacher_batch(self.processing_class, scoring.prompts, by_row,
                                               output["completion_ids"], output["completion_mask"], self.reprompt,
                                               self.chat_template_kwargs)
        loss_mask = self._loss_mask(output)
        sd_mask = batch.sd_mask * loss_mask
        mode = "train" if self.model.training else "eval"
        metrics = {**contexts.counts.metrics(prefix="composer/teacher/"),
                   **self.on_policy_targets.count(rows, loss_mask, sd_mask)}
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        return teacher_fields(batch, sd_mask)

    def _without_target_rows(self, output: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Target rows have no verifiable reward: their advantage is zero, and the policy channel's token count
        leaves them out (its mask does too: `_policy_mask`)."""
        assert self.on_policy_targets is not None
        advantages = output["advantages"]
        rows = self.on_policy_targets.row_mask(advantages.device)
        policy_tokens = self._loss_mask(output) * (~rows).unsqueeze(1)
        return {"target_rows": rows,
                "advantages": torch.where(rows.view(-1, *(1,) * (advantages.dim() - 1)), 0.0, advantages),
                "num_items_in_batch": self.accelerator.gather(policy_tokens.sum()).sum()}

    def _composer_advantages(self, output: dict[str, Any]) -> torch.Tensor:
        """Advantages from the composer estimator over the rewards of every process (groups are consecutive
        runs of num_generations), with the KL penalty in the reward when configured; this process's slice."""
        assert self.scoring is not None
        policy = self.composer_config.policy
        rewards = self._all_rewards()
        if policy.kl.coef > 0 and policy.kl.placement == "reward":
            rewards = rewards - self.accelerator.gather(self._sequence_kl(output))
        groups = torch.arange(rewards.shape[0], device=rewards.device) // self.num_generations
        one_token = torch.ones(rewards.shape[0], 1, dtype=torch.bool, device=rewards.device)
        return self._local(compute_advantages(policy, rewards, one_token, groups)[:, 0])

    def _sequence_kl(self, output: dict[str, Any]) -> torch.Tensor:
        """coef * sum_t KL_t(behaviour || reference) per local sequence, for KL in the reward."""
        kl = self.composer_config.policy.kl
        if "ref_per_token_logps" not in output:
            raise ConfigError("KL in the reward needs reference log-probs: set GRPOConfig.beta to kl.coef")
        behaviour = output.get("old_per_token_logps")
        if behaviour is None:
            with torch.no_grad():
                behaviour = self._completion_log_probs(self.model, output)
        per_token = kl_estimate(behaviour, output["ref_per_token_logps"], kl.estimator, clamp=kl.clamp,
                                log_ratio_clamp=kl.log_ratio_clamp)
        mask = output["completion_mask"].bool()
        return kl.coef * torch.where(mask, per_token, 0.0).sum(-1)

    # ---- the loss ------------------------------------------------------------------------------------------------

    def _completion_log_probs(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of the completion through TRL's own forward (temperature included)."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        log_probs, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                                  inputs["completion_ids"].size(1))
        return log_probs

    def _loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask

    def _policy_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The policy channel's mask: the loss mask without the agent-trace target rows."""
        mask = self._loss_mask(inputs)
        return mask * (~inputs["target_rows"]).unsqueeze(1) if "target_rows" in inputs else mask

    def _normaliser(self, inputs: dict[str, Any]) -> Normaliser:
        training = self.model.training
        rows = inputs["completion_ids"].size(0)
        return trl_normaliser(num_items_in_batch=inputs["num_items_in_batch"],
                              num_processes=self.accelerator.num_processes,
                              local_sequences=rows - int(inputs["target_rows"].sum()) if "target_rows" in inputs
                              else rows,
                              accumulation_steps=self.current_gradient_accumulation_steps if training else 1,
                              steps_per_generation=self.args.steps_per_generation,
                              max_completion_length=self.max_completion_length, training=training)

    def _student_logits(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The policy's raw logits (B, T, vocab) predicting each completion token."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        width = inputs["completion_ids"].size(1)
        output = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=width + 1, use_cache=False)
        return output.logits[:, :-1]

    def _distill_inputs(self, model: Any, inputs: dict[str, Any], student_logits: torch.Tensor) -> DistillInputs:
        assert self.teacher is not None
        completion_ids = inputs["completion_ids"]
        batch = TeacherBatch(inputs["teacher_input_ids"], inputs["teacher_attention_mask"], inputs["sd_mask"],
                             inputs["teacher_input_ids"].size(1) - completion_ids.size(1),
                             inputs.get("teacher_prefix_group"), inputs.get("teacher_prefix_length"))
        teacher_logits = self.teacher.teacher_logits(self.accelerator.unwrap_model(model), batch.completion_logits)
        return DistillInputs(student_logits, teacher_logits, inputs["sd_mask"], response_mask=self._loss_mask(inputs),
                             token_ids=completion_ids, old_log_prob=inputs.get("old_per_token_logps"))

    def _preference_batch(self, model: Any) -> PreferenceBatch:
        assert self.preference is not None
        tokens = self.preference.next_batch(self.accelerator.device)
        return preference_batch(model, tokens, ref_model=self.preference_reference, temperature=self.temperature)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The composer loss in place of TRL's: the enabled channels, plus the off-policy targets' term when
        training."""
        mode = "train" if self.model.training else "eval"
        distill = None
        if self.teacher is not None:
            student_logits = self._student_logits(model, inputs)
            log_probs = token_log_probs(student_logits / self.temperature, inputs["completion_ids"])
            distill = self._distill_inputs(model, inputs, student_logits)
        else:
            log_probs = self._completion_log_probs(model, inputs)
        policy = None
        if self.composer_loss.enabled["policy"]:
            policy = PolicyInputs(log_probs, inputs["advantages"], self._policy_mask(inputs),
                                  old_log_prob=inputs.get("old_per_token_logps"),
                                  ref_log_prob=inputs.get("ref_per_token_logps"),
                                  rollout_weights=inputs.get("importance_sampling_ratio"))
        preference = self._preference_batch(model) if self.preference is not None else None
        scale = 1.0 / (self.current_gradient_accumulation_steps if self.model.training else 1)
        output = self.composer_loss(policy=policy, distill=distill, preference=preference,
                                    normaliser=self._normaliser(inputs), distill_normaliser=Normaliser(scale=scale))
        for name, value in output.metrics.items():
            self._metrics[mode][f"composer/{name}"].append(value)
        if self.off_policy_targets is None or not self.model.training:
            return output.loss
        assert self.teacher is not None
        term, metrics = self.off_policy_targets.term(self.composer_loss, model, self.teacher,
                                                     self.accelerator.unwrap_model(model), scale,
                                                     self.accelerator.device)
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        return output.loss + term
