"""The full composer loss in VeRL's engine: set once with `set_loss_fn`, called by the engine in two forms.

- `loss(model_output=, data=, dp_group=)`: VeRL's own actor loss (`ppo_loss`, so entropy, KL and metrics stay
  VeRL's) with the composer objective, plus the self-distillation term on the targeted tokens.
- `loss(student_logits=, data=)`: the logits-processor call, the only place VeRL shows custom code the
  logits (when the micro-batch flag `distillation_use_topk` is set). It returns per-token tensors that the
  engine stores in `model_output`: on the update, the distillation loss against the precomputed teacher; on
  a teacher pass, the teacher's log-probs over the support (and its top-K ids); on a student pass, the
  student's top-K ids.

VeRL divides the logits by the rollout temperature before either call, so no temperature is applied here (the
composer group must set distill.temperature to the rollout temperature; `group` checks it).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo import core_algos
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.utils.ulysses import get_ulysses_sequence_parallel_world_size, slice_input_tensor
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from composer_core.config import ComposerConfig
from composer_core.distill import distill_per_token_precomputed, importance_weight
from composer_core.errors import BatchError, ConfigError
from composer_core.loss import EmptyDistillMaskWarning
from composer_core.objectives import aggregate
from composer_core.objectives.aggregation import masked_mean
from composer_core.readout import Readout
from composer_verl.actor_settings import global_normaliser
from composer_verl.layout import to_packed
from composer_verl.policy_loss import LOSS_MODE_PREFIX, make_policy_loss_fn

TEACHER_IDS = "composer_teacher_ids"
TEACHER_LOG_PROBS = "composer_teacher_log_probs"
DISTILL_MASK = "composer_distill_mask"
DISTILL_OUTPUT = "composer_distill"
TEACHER_PASS = "composer_teacher_pass"  # non-tensor flag: this forward is the teacher's, return its top-K
STUDENT_PASS = "composer_student_pass"  # non-tensor flag: the student's forward before the update (student_topk)
SUPPORT_IDS = "composer_support_ids"  # per response token: the student's top-K ids, for the teacher pass


def topk_keys(top_k: int) -> tuple[list[str], list[str]]:
    """model_output keys of a teacher pass: the engine stores one (total_nnz,) tensor per key."""
    return [f"composer_topk_id_{k}" for k in range(top_k)], [f"composer_topk_log_prob_{k}" for k in range(top_k)]


class ComposerActorLoss:
    """The loss VeRL's `set_loss_fn` installs: `partial(ppo_loss, config=...)`'s contract, the ActorConfig bound.

    It is pickled to every Ray worker; the composer settings travel as plain data and everything derived from
    them (validated config, a private loss mode) is rebuilt in the process that uses it.
    """

    def __init__(self, actor_config: Any, composer: Mapping[str, Any]) -> None:
        self.actor_config = actor_config
        self.composer_settings = dict(composer)
        self.empty_distill_events = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"actor_config": self.actor_config, "composer_settings": self.composer_settings,
                "empty_distill_events": 0}

    @functools.cached_property
    def composer(self) -> ComposerConfig:
        """Validated where it runs, so objectives from plugins installed on the workers resolve there."""
        return ComposerConfig.from_mapping(self.composer_settings, source="the composer config group")

    @functools.cached_property
    def policy_config(self) -> Any:
        """The ActorConfig VeRL's ppo_loss runs with; a private loss mode when the group adds objective settings."""
        extras = self.composer.policy.objective.params
        if not extras:
            return self.actor_config
        name = self.composer.policy.objective.name
        private = f"{LOSS_MODE_PREFIX}{name}@composer-group"
        core_algos.register_policy_loss(private)(make_policy_loss_fn(name, extras))
        policy_loss = dataclasses.replace(self.actor_config.policy_loss, loss_mode=private)
        return dataclasses.replace(self.actor_config, policy_loss=policy_loss, global_batch_info={})

    def __call__(self, model_output: dict[str, Any] | None = None, data: TensorDict | None = None,
                 dp_group: Any = None, student_logits: torch.Tensor | None = None,
                 data_format: str = "thd") -> Any:
        """Both engine calls; `data_format` is passed by Megatron's engine and is irrelevant to packed logits."""
        if data is None:
            raise TypeError("VeRL calls the loss with `data` (the micro-batch TensorDict)")
        if student_logits is not None:
            return self.logits_processor(student_logits, data)
        if model_output is None:
            raise TypeError("VeRL calls the loss with `model_output` (log_probs and friends)")
        return self.loss(model_output, data, dp_group)

    # ------------------------------------------------------------ logits processor

    def logits_processor(self, student_logits: torch.Tensor, data: TensorDict) -> dict[str, torch.Tensor]:
        if tu.get_non_tensor_data(data=data, key=STUDENT_PASS, default=False):
            return self.student_topk(student_logits)
        if tu.get_non_tensor_data(data=data, key=TEACHER_PASS, default=False):
            return self.teacher_support(student_logits, data)
        settings = self.composer.distill
        ids = self._packed_field(data, TEACHER_IDS, student_logits)
        log_probs = self._packed_field(data, TEACHER_LOG_PROBS, student_logits)
        per_token = distill_per_token_precomputed(
            student_logits, ids, log_probs.to(student_logits.dtype), support=settings.support, alpha=settings.alpha,
            tail=settings.tail, temperature=1.0, pointwise_clip=settings.pointwise_clip,
            divergence=self.composer.distill.resolve_divergence())
        return {DISTILL_OUTPUT: per_token}

    def student_topk(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student pass (support student_topk): the student's top-K ids at every position."""
        ids = logits.topk(self.composer.distill.top_k, dim=-1).indices
        return self._per_key(topk_keys(self.composer.distill.top_k)[0], ids.float())

    def teacher_support(self, logits: torch.Tensor, data: TensorDict) -> dict[str, torch.Tensor]:
        """The teacher pass: the teacher's log-probs over the support at every position, with the support's ids
        when the teacher chooses them (teacher_topk). The logits are the teacher context's, under the teacher's
        weights (the current ones for a live teacher)."""
        settings = self.composer.distill
        if settings.support == "sampled_token":
            return {}  # the teacher's log-prob of each sampled token is VeRL's own `log_probs` output
        id_keys, value_keys = topk_keys(settings.top_k)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        if settings.support == "student_topk":
            ids = self._packed_field(data, SUPPORT_IDS, logits)
            return self._per_key(value_keys, log_probs.gather(-1, ids))
        values, ids = log_probs.topk(settings.top_k, dim=-1)
        return {**self._per_key(id_keys, ids.float()), **self._per_key(value_keys, values)}

    @staticmethod
    def _per_key(keys: list[str], values: torch.Tensor) -> dict[str, torch.Tensor]:
        """(1, total_nnz, K) -> K outputs of (1, total_nnz): the engine accepts one value per token and key.
        Ids travel as float32 (exact below 2**24): VeRL all-gathers the outputs across sequence-parallel ranks
        through an autograd function."""
        return {key: values[..., i].contiguous() for i, key in enumerate(keys)}

    def _packed_field(self, data: TensorDict, key: str, logits: torch.Tensor) -> torch.Tensor:
        """A per-response-token field of the micro-batch at the packed positions of this rank's logits."""
        if key not in data.keys():  # noqa: SIM118 - TensorDict membership goes through keys()
            raise BatchError(f"the micro-batch has no {key!r}: the composer trainer writes it before this forward; "
                             "set trainer.v1.trainer_mode=composer")
        total = data["input_ids"].values().shape[0] if data["input_ids"].is_nested else logits.shape[1]
        return self._local(to_packed(data[key], data, total), logits)

    @staticmethod
    def _local(packed: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """(total, K) -> (1, local, K): this sequence-parallel rank's slice, as VeRL slices its own inputs."""
        packed = packed.unsqueeze(0).to(student_logits.device)
        if get_ulysses_sequence_parallel_world_size() > 1:
            packed = slice_input_tensor(packed, dim=1)
        if packed.shape[1] != student_logits.shape[1]:
            raise BatchError(f"teacher tensors cover {packed.shape[1]} positions but the student's logits have "
                             f"{student_logits.shape[1]}")
        return packed

    # ------------------------------------------------------------ final loss

    def loss(self, model_output: dict[str, Any], data: TensorDict, dp_group: Any) -> tuple[torch.Tensor, dict]:
        if any(tu.get_non_tensor_data(data=data, key=flag, default=False) for flag in (TEACHER_PASS, STUDENT_PASS)):
            return torch.zeros((), device=data["input_ids"].device), {}  # a forward-only pass for its outputs
        composer = self.composer
        total: torch.Tensor | float = 0.0
        metrics: dict[str, Any] = {}
        if composer.policy.weight > 0:
            policy, metrics = ppo_loss(self.policy_config, model_output, data, dp_group)
            total = composer.policy.weight * policy
        if composer.distill.weight > 0:
            distill, distill_metrics = self.distill_loss(model_output, data)
            total = total + composer.distill.weight * distill
            metrics.update(distill_metrics)
        if not isinstance(total, torch.Tensor):
            raise ConfigError("every channel is off: give policy.weight or distill.weight a positive value")
        return total, metrics

    def distill_loss(self, model_output: dict[str, Any], data: TensorDict) -> tuple[torch.Tensor, dict]:
        settings = self.composer.distill
        if DISTILL_OUTPUT not in model_output:
            raise BatchError("model_output has no composer_distill: the logits processor did not run; the composer "
                             "trainer sets distillation_use_topk on the update batch")
        per_token = no_padding_2_padding(model_output[DISTILL_OUTPUT], data)
        padded = data.select("response_mask", "old_log_probs", DISTILL_MASK).to_padded_tensor()
        response = padded["response_mask"].bool()
        mask = response & padded[DISTILL_MASK].bool()
        readout = Readout()  # the counts and the IS weight's mean in one device read
        readout.add(tokens=mask.sum(), responses=response.sum())
        if settings.is_clip is not None:
            log_prob = no_padding_2_padding(model_output["log_probs"], data)
            weight = importance_weight(log_prob, padded["old_log_probs"], settings.is_clip)
            per_token = per_token * weight
            readout.add(is_weight_mean=masked_mean(weight, mask))
        read = readout.read()
        tokens = read["tokens"]
        metrics: dict[str, Any] = {"distill/tokens": Metric(AggregationType.SUM, tokens),
                                   "distill/coverage": Metric(AggregationType.MEAN,
                                                              tokens / max(read["responses"], 1.0))}
        if "is_weight_mean" in read:
            metrics["distill/is_weight_mean"] = Metric(AggregationType.MEAN, read["is_weight_mean"])
        if tokens == 0:
            self._report_empty()
        info = {"dp_size": data["dp_size"], "batch_num_tokens": data["batch_num_tokens"],
                "global_batch_size": data["global_batch_size"],
                "loss_scale_factor": self.actor_config.loss_scale_factor}
        value = aggregate(per_token, mask, settings.aggregation, global_normaliser(info, settings.aggregation))
        metrics["distill/loss"] = Metric(AggregationType.SUM, value.detach())
        return value, metrics

    def _report_empty(self) -> None:
        """A micro-batch without a targeted token adds nothing; say so once (the trainer counts it per step)."""
        self.empty_distill_events += 1
        if self.empty_distill_events == 1:
            warnings.warn("self-distillation is on but a micro-batch has no targeted token: its distillation term "
                          "is zero. The trainer's composer/distill_rows metric shows how many rows had a teacher",
                          EmptyDistillMaskWarning, stacklevel=3)
