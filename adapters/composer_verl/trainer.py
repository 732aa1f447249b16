"""The `composer` V1 trainer (`trainer.use_v1=true trainer.v1.trainer_mode=composer`): the full composer loss.

VeRL's synchronous trainer, plus:
- at init, the composer loss is set once on the actor workers (`set_loss_fn`), and the teacher copy is made;
- after the advantages (rewards are known), the teacher pass: teacher contexts from successful siblings,
  reward feedback and dataset hints, one actor forward on them with the teacher's weights, and the teacher's
  top-K stored with each sample;
- the update runs with VeRL's logits-processor flag on, so the loss sees the student's logits;
- after the update the teacher moves toward the policy (EMA) or stays (frozen, live);
- once a step's metrics are complete, the training guard judges it and acts (composer_verl.guard_hook).
The actor role runs `ComposerActorWorker`, VeRL's worker with the teacher forward and update added.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.replay_buffer import DAPO_FILTERED_REWARD_COUNTS_KEY
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.metric import reduce_metrics
from verl.utils.py_functional import rename_dict

from composer_core.loss import EmptyDistillMaskWarning
from composer_core.selfteach import RepromptSettings, TeacherContext, build_teacher_contexts
from composer_verl.actor_settings import objective_params
from composer_verl.composite_loss import STUDENT_PASS, SUPPORT_IDS, TEACHER_PASS, ComposerActorLoss, topk_keys
from composer_verl.group import composer_settings
from composer_verl.guard_hook import GuardHook, GuardStopped
from composer_verl.teacher_pass import (
    messages_of,
    response_columns,
    response_sampled,
    response_topk,
    sequence_rewards,
    student_fields,
    teacher_rows,
)
from composer_verl.worker import ComposerActorWorker

TRAINER_NAME = "composer"
TEACHER_PARTITION = "composer_teacher"
HINT_KEY = "hint"  # in the dataset row's extra_info
FEEDBACK_KEY = "feedback"  # in the reward function's extra outputs


def feedback_of(data: Any) -> list[str | None] | None:
    """The reward function's `feedback` output per sample: VeRL keeps a streaming reward's extra outputs in
    `extra_fields["reward_extra_info"]` and a colocated reward model's as top-level fields."""
    available = set(data.keys())
    if FEEDBACK_KEY in available:
        return list(data[FEEDBACK_KEY])
    if "extra_fields" in available:
        return [((row or {}).get("reward_extra_info") or {}).get(FEEDBACK_KEY) for row in list(data["extra_fields"])]
    return None


@register_trainer(TRAINER_NAME)
class ComposerTrainer(PPOTrainerSync):
    """VeRL's sync trainer with composer self-distillation; channel 1 alone runs on any VeRL trainer."""

    def __init__(self, config: DictConfig) -> None:
        self.composer, self.composer_group = composer_settings(config)
        self.reprompt = RepromptSettings(**self.composer.distill.context)
        actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
        resolved = self.composer.policy.objective.resolve()
        objective_params(resolved.objective, actor, self.composer.policy.objective.params)  # refuse conflicts now
        self.empty_distill_steps = 0
        guard = self.composer.guard
        self.guard_hook = GuardHook(guard, config.trainer.default_local_dir, self._restore_checkpoint) \
            if guard.enabled else None
        super().__init__(config)

    @property
    def trainer_mode(self) -> str:
        """VeRL keys synchronous behaviour (replay buffer, refills, weight sync) on the mode name "sync", and
        this trainer is VeRL's sync trainer: settings under trainer.v1.sync apply to it."""
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, registered_name: str) -> None:
        """VeRL's constructor stores the registry name (composer) here; the behaviour stays sync's."""

    @property
    def distilling(self) -> bool:
        return self.composer.distill.weight > 0

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(ComposerActorWorker)

    def on_init_end(self) -> None:
        actor = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(ComposerActorLoss(actor, self.composer_group))
        if self.distilling:
            self.actor_rollout_wg.init_teacher(self.composer.distill.teacher, self.composer.distill.teacher_rate)
        super().on_init_end()

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_advantage(batch, metrics)
        return self._teacher_pass(batch, metrics) if self.distilling else batch

    # ------------------------------------------------------------ teacher pass

    def _contexts(self, batch: KVBatchMeta, data: Any) -> list[TeacherContext]:
        responses = [self.tokenizer.decode(row, skip_special_tokens=True) for row in data["responses"].unbind()]
        available = set(data.keys())
        hints = ([(row or {}).get(HINT_KEY) for row in list(data["extra_info"])] if "extra_info" in available
                 else None)
        feedback = feedback_of(data)
        built = build_teacher_contexts(messages_of(data["raw_prompt"]), responses, list(data["uid"]),
                                       sequence_rewards(data["rm_scores"]), feedback=feedback, hints=hints,
                                       settings=self.reprompt)
        padding = [tag.get("is_padding", False) for tag in batch.tags]
        return [TeacherContext(None) if pad else context for context, pad in zip(built.contexts, padding, strict=True)]

    def _teacher_pass(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        wanted = ["prompts", "responses", "response_mask", "rm_scores", "uid", "raw_prompt", "extra_info",
                  "extra_fields", FEEDBACK_KEY]
        present = set(batch.fields) if batch.fields is not None else set(wanted)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=[name for name in wanted if name in present])
        contexts = self._contexts(batch, data)
        support_ids = self._student_topk(batch, data) if self.composer.distill.support == "student_topk" else None
        extra = None if support_ids is None else {SUPPORT_IDS: support_ids}
        keys = self._put_rows(batch, data, contexts, "teacher", extra)
        self.actor_rollout_wg.compute_teacher_topk(self._forward_only(keys, TEACHER_PASS))
        ids, log_probs = self._teacher_outputs(keys, support_ids)
        tq.kv_clear(keys=keys, partition_id=TEACHER_PARTITION)
        targeted = [context.messages is not None for context in contexts]
        updated = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                                  fields=student_fields(ids, log_probs, data["response_mask"], targeted))
        batch.fields = updated.fields
        self._record(contexts, metrics)
        return batch

    def _put_rows(self, batch: KVBatchMeta, data: Any, contexts: list[TeacherContext], role: str,
                  per_response: dict[str, Any] | None = None) -> list[str]:
        """Rows `[prompt of the context | the sample's response]` into the side partition, keyed per role."""
        rows, tags = teacher_rows(self.tokenizer, data["prompts"], data["responses"], data["response_mask"], contexts,
                                  self.reprompt, OmegaConf.to_container(self.config.data.apply_chat_template_kwargs),
                                  per_response)
        keys = [f"{key}__{role}" for key in batch.keys]
        tq.kv_batch_put(keys=keys, partition_id=TEACHER_PARTITION, fields=rows, tags=tags)
        return keys

    def _forward_only(self, keys: list[str], flag: str) -> KVBatchMeta:
        """A forward over side-partition rows whose per-token outputs come from the composer loss."""
        return KVBatchMeta(keys=keys, tags=[{} for _ in keys], partition_id=TEACHER_PARTITION,
                           extra_info={"compute_loss": True, "distillation_use_topk": True, "distillation_only": False,
                                       "calculate_entropy": False, flag: True,
                                       "temperature": self.config.actor_rollout_ref.rollout.temperature})

    def _student_topk(self, batch: KVBatchMeta, data: Any) -> Any:
        """student_topk support: the student's top-K ids per response token, from the actor's own forward on
        the student's rows (VeRL's compute_log_prob, current weights), before the update."""
        keys = self._put_rows(batch, data, [TeacherContext(None)] * len(batch.keys), "student")
        self.actor_rollout_wg.compute_log_prob(self._forward_only(keys, STUDENT_PASS))
        id_keys, _ = topk_keys(self.composer.distill.top_k)
        output = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION, select_fields=[*id_keys, "response_mask"])
        tq.kv_clear(keys=keys, partition_id=TEACHER_PARTITION)
        return response_columns(output, id_keys, output["response_mask"], torch.long)

    def _teacher_outputs(self, keys: list[str], support_ids: Any) -> tuple[Any, Any]:
        """Per sample and response token: the support's ids and the teacher's log-probs there (sampled_token:
        the sampled token and its log-prob), read back from the teacher partition."""
        settings = self.composer.distill
        if settings.support == "sampled_token":
            output = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION,
                                     select_fields=["log_probs", "responses", "response_mask"])
            return response_sampled(output)
        id_keys, value_keys = topk_keys(settings.top_k)
        if support_ids is not None:  # student_topk: the ids are the student's, the teacher scored them
            output = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION,
                                     select_fields=[*value_keys, "response_mask"])
            return support_ids, response_columns(output, value_keys, output["response_mask"], torch.float32)
        output = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION,
                                 select_fields=[*id_keys, *value_keys, "response_mask"])
        return response_topk(output, output["response_mask"], settings.top_k)

    def _record(self, contexts: list[TeacherContext], metrics: dict) -> None:
        """Per step: how many rows have a teacher, by source; a step without any is a reported event."""
        rows = len(contexts)
        for source in ("demonstration", "feedback", "hint"):
            metrics[f"composer/distill_{source}_fraction"] = sum(source in c.sources for c in contexts) / rows
        targeted = sum(context.messages is not None for context in contexts)
        metrics["composer/distill_rows"] = targeted / rows
        metrics["composer/distill_empty_batch"] = float(targeted == 0)
        if targeted == 0:
            self.empty_distill_steps += 1
            metrics["composer/distill_empty_steps"] = float(self.empty_distill_steps)
            warnings.warn(f"step {self.global_steps}: no sample has a teacher context (no successful sibling, "
                          "feedback or hint), so self-distillation adds nothing this step",
                          EmptyDistillMaskWarning, stacklevel=2)

    # ------------------------------------------------------------ update

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """VeRL's update with its logits-processor flag on; VeRL only sets it for its own distillation."""
        if not self.distilling:
            return super()._update_actor(batch, metrics)
        actor = self.config.actor_rollout_ref.actor
        mini_batch = actor.ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n
        batch.extra_info.update({
            "calculate_entropy": actor.calculate_entropy or actor.entropy_coeff != 0.0,
            "distillation_use_topk": True, "distillation_only": False,
            "global_batch_size": mini_batch, "mini_batch_size": mini_batch, "epochs": actor.ppo_epochs,
            "seed": actor.data_loader_seed, "dataloader_kwargs": {"shuffle": actor.shuffle},
            "temperature": self.config.actor_rollout_ref.rollout.temperature})
        output = self.actor_rollout_wg.update_actor(batch)
        output = rename_dict(output["metrics"], "actor/")
        output["perf/mfu/actor"] = output.pop("actor/mfu")
        metrics.update(reduce_metrics(output))
        self.actor_rollout_wg.update_teacher()
        return batch

    # ------------------------------------------------------------ guard

    def _step_folder(self, step: int) -> str:
        """Where VeRL's _save_checkpoint puts the state after `step` updates."""
        return os.path.join(self.config.trainer.default_local_dir, f"global_step_{step}")

    def _save_checkpoint(self) -> None:
        super()._save_checkpoint()
        if self.guard_hook is not None:
            self.guard_hook.saved(self.global_steps, self._step_folder(self.global_steps))

    def _load_checkpoint(self) -> None:
        """VeRL's resume; the checkpoint resumed from is judged by the first step, like one saved by this run."""
        super()._load_checkpoint()
        if self.guard_hook is not None and self.global_steps > 0:
            trainer = self.config.trainer
            resumed = trainer.resume_from_path if trainer.resume_mode == "resume_path" else \
                self._step_folder(self.global_steps)
            self.guard_hook.saved(self.global_steps, str(resumed))

    def _compute_metrics(self, batch: KVBatchMeta, metrics: dict, timing_raw: dict, global_steps: int,
                         epoch: int) -> None:
        """VeRL's metrics of the step, then the guard's judgement of them (they are complete only here)."""
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if self.guard_hook is not None:
            self._guard(self.guard_hook, global_steps, metrics)

    def _guard(self, hook: GuardHook, step: int, metrics: dict) -> None:
        """Observe the step; VeRL's loop logs the metrics after this call, so a stop logs them before ending it."""
        try:
            hook.observe(step, metrics)
        except GuardStopped:
            metrics.pop(DAPO_FILTERED_REWARD_COUNTS_KEY, None)
            self.logger.log(data=metrics, step=step)
            raise
        if step >= self.total_training_steps:
            hook.write_report()

    def _restore_checkpoint(self, folder: str, lr_scale: float) -> float:
        """The guard's rollback, in the order of VeRL's own resume: rollout replicas asleep, the actor (with the
        composer teacher) and critic loaded by their workers, the actor's learning rate scaled, the restored
        weights synced to the replicas. The data loader keeps its position: the run moves on to new prompts."""
        self.checkpoint_manager.sleep_replicas()
        self.actor_rollout_wg.load_checkpoint(local_path=os.path.join(folder, "actor"))
        if self.use_critic:
            self.critic_wg.load_checkpoint(local_path=os.path.join(folder, str(Role.Critic)))
        rates = self.actor_rollout_wg.scale_learning_rate(lr_scale)
        self.checkpoint_manager.update_weights(self.global_steps)
        return float(rates[0] if isinstance(rates, list) else rates)
