"""composer-core's loss under torchtune's GRPO loss contract, selected by `_component_` in a torchtune YAML.

torchtune's GRPO recipe (`recipes/dev/grpo_full_finetune_distributed.py`, GitHub main) builds the loss with
`config.instantiate(cfg.loss)` and calls `loss(pi_old_logprobs, pi_logprobs, ref_logprobs, advantages,
padding_masks=mask)`: sampled-token log-probs of shape (B*G, L) whose padding holds 1.0, advantages (B*G,), and a
bool mask that is True on response tokens. It backpropagates the first element of `(loss, policy_loss, kl_loss,
ratios, clipfrac)` and stacks the other four, detached scalars, for logging. Both components keep that contract;
the policy term is always `ComposerLoss.policy_loss`, so objectives are never re-implemented here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from composer_core import (
    BatchError,
    ComposerConfig,
    ComposerLoss,
    ConfigError,
    DistillInputs,
    EmptyDistillMaskWarning,
    Normaliser,
    PolicyInputs,
)
from composer_core.contracts import as_bool_mask, check_finite, check_same_shape, finite_probe, is_finite_sum
from composer_core.distill import distill_per_token_precomputed, importance_weight
from composer_core.objectives import aggregate, kl_estimate
from composer_core.objectives.aggregation import AggregationMode, masked_mean
from composer_core.objectives.kl import KLEstimator
from composer_core.readout import Readout
from composer_torchtune.loss_settings import (
    TORCHTUNE_KL_COEFF,
    composer_config,
    loss_arguments,
    objective_settings,
)

Scope = Literal["global", "local"]


def policy_settings(owner: str, epsilon: float | None = None, kl_coeff: float = TORCHTUNE_KL_COEFF, *,
                    objective: str = "dapo", epsilon_high: float | None = None, kl_estimator: KLEstimator = "k3",
                    kl_placement: Literal["loss", "reward"] = "loss", kl_clamp: float | None = None,
                    kl_log_ratio_clamp: float | None = None, kl_straight_through: bool = False,
                    kl_importance_weighted: bool = False, aggregation: AggregationMode | None = None,
                    normaliser: Scope | None = None, allow_empty_rows: bool = False,
                    **objective_params: Any) -> dict[str, Any]:
    """The `policy` section of a ComposerConfig from the loss's arguments (see ComposerGRPOLoss)."""
    return {"objective": {"name": objective, "aggregation": aggregation, "normaliser": normaliser,
                          "params": objective_settings(objective, epsilon, epsilon_high, objective_params, owner)},
            "kl": {"coef": kl_coeff, "estimator": kl_estimator, "placement": kl_placement, "clamp": kl_clamp,
                   "log_ratio_clamp": kl_log_ratio_clamp, "straight_through": kl_straight_through,
                   "importance_weighted": kl_importance_weighted},
            "allow_empty_rows": allow_empty_rows}


@dataclass(frozen=True)
class PolicyTerm:
    """Channel 1 of one call: the loss with its graph and torchtune's four logged numbers (detached)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl_loss: torch.Tensor
    ratios: torch.Tensor
    clipfrac: torch.Tensor
    metrics: dict[str, float]


class _TorchtuneLoss(nn.Module):
    """What both components share: the validated config, the core loss, and the policy term."""

    config: ComposerConfig

    def _use(self, config: ComposerConfig) -> None:
        self.config = config
        self.core = ComposerLoss(config)
        self.metrics: dict[str, float] = {}

    def extra_repr(self) -> str:
        resolved = self.core.objective
        return (f"objective={resolved.objective.name}, params={resolved.params.model_dump()}, "
                f"aggregation={resolved.aggregation}, kl={self.config.policy.kl.model_dump()}")

    def policy_term(self, pi_old_logprobs: torch.Tensor, pi_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                    advantages: torch.Tensor, mask: torch.Tensor, normaliser: Normaliser | None) -> PolicyTerm:
        """`ComposerLoss.policy_loss`, and torchtune's logged numbers: `policy_loss` is the surrogate objective (the
        negated policy part of the loss) and `kl_loss` the KL term as aggregated in the loss, so that
        `loss = -(policy_loss - kl_coeff * kl_loss)` as in torchtune; `ratios` and `clipfrac` are token means over
        the mask (clipfrac 0 for an objective without clipping, as torchtune's GRPOSimpleLoss reports). torchtune's
        GRPOLoss averages `ratios` over every position, padding included (ratio 1 there with its recipe's 1.0
        fill), so its value is diluted by padding; without padding the two agree, and padding is never read here."""
        inputs = PolicyInputs(log_prob=pi_logprobs, advantages=advantages, mask=mask, old_log_prob=pi_old_logprobs,
                              ref_log_prob=ref_logprobs)
        value, metrics = self.core.policy_loss(inputs, normaliser)
        kl = self._kl_loss(inputs, normaliser)
        settings = self.config.policy.kl
        in_loss = kl * settings.coef if settings.placement == "loss" else torch.zeros_like(kl)
        device = value.device
        return PolicyTerm(value, -(value.detach() - in_loss), kl,
                          masked_mean(torch.exp(pi_logprobs.detach() - pi_old_logprobs), mask),
                          torch.tensor(metrics.get("policy/clipfrac", 0.0), device=device), metrics)

    @torch.no_grad()
    def _kl_loss(self, inputs: PolicyInputs, normaliser: Normaliser | None) -> torch.Tensor:
        """The KL estimate aggregated like the policy loss (0 without reference log-probs)."""
        mask, log_prob = inputs.mask, inputs.log_prob.detach()
        if inputs.ref_log_prob is None:
            return log_prob.new_zeros(())
        settings, resolved = self.config.policy.kl, self.core.objective
        per_token = kl_estimate(log_prob, inputs.ref_log_prob, settings.estimator, clamp=settings.clamp,
                                log_ratio_clamp=settings.log_ratio_clamp)
        if settings.importance_weighted and settings.placement == "loss":
            per_token = per_token * (log_prob - inputs.old_log_prob).exp()
        return aggregate(per_token, mask, resolved.aggregation, scoped(normaliser, resolved.normaliser))


def response_mask(pi_logprobs: torch.Tensor, padding_masks: torch.Tensor | None, advantages: torch.Tensor,
                  **log_probs: torch.Tensor | None) -> torch.Tensor:
    """Check torchtune's tensors under torchtune's names; the bool mask (None: every position is a token)."""
    if not isinstance(pi_logprobs, torch.Tensor) or pi_logprobs.dim() != 2:
        raise BatchError(f"pi_logprobs must be a (batch * group, response_length) tensor, got "
                         f"{getattr(pi_logprobs, 'shape', type(pi_logprobs).__name__)}")
    shape = tuple(pi_logprobs.shape)
    check_same_shape(shape, "pi_logprobs", **{name: t for name, t in log_probs.items() if t is not None})
    mask = torch.ones(shape, dtype=torch.bool, device=pi_logprobs.device) if padding_masks is None \
        else as_bool_mask(padding_masks, "padding_masks")
    check_same_shape(shape, "pi_logprobs", padding_masks=mask)
    if not isinstance(advantages, torch.Tensor) or tuple(advantages.shape) not in ((shape[0],), shape):
        raise BatchError(f"advantages has shape {tuple(getattr(advantages, 'shape', ()))}; expected ({shape[0]},), "
                         f"one per sequence as torchtune's recipe passes it, or per token {shape}")
    return mask


def scoped(normaliser: Normaliser | None, scope: str) -> Normaliser:
    """The caller's counts for a "global" term, this batch's for a "local" one (as the core aggregates)."""
    norm = normaliser or Normaliser()
    return norm if scope == "global" else norm.local()


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


class ComposerGRPOLoss(_TorchtuneLoss):
    """Any registered composer objective (built-in or plugin) under torchtune's GRPO loss contract.

    `loss: {_component_: composer_torchtune.ComposerGRPOLoss, objective: dapo, epsilon: 0.2, kl_coeff: 0.05}`.
    Defaults are torchtune's `GRPOLoss()`: objective `dapo` (token-level clip, one token mean over the batch) with
    epsilon 0.1 on both bounds and k3 KL at kl_coeff 0.1, so that swapping the `_component_` of an existing job
    changes nothing else. `objective: grpo` is torchtune's GRPOSimpleLoss (per-sequence token mean) when the
    batch is on-policy. Composer's own base, `dr_grpo`, is one argument away; `from_config` takes an experiment
    config's choice.

    epsilon, epsilon_high: the clip bounds (torchtune's `epsilon` sets both; see `loss_settings.clip_bounds` for
        None). kl_coeff, kl_estimator (k1 / k2 / k3 / abs): composer's `policy.kl.coef` / `estimator`; the other
        `kl_*` arguments are the rest of `policy.kl`. aggregation, normaliser: override the objective's. Any
        other keyword is a setting of the objective (validated by the core; an unknown name is a ConfigError
        listing what it accepts).
    forward also takes `normaliser=`, global counts for data-parallel invariance (default: this batch's).
    """

    def __init__(self, epsilon: float | None = None, kl_coeff: float = TORCHTUNE_KL_COEFF, *,
                 objective: str = "dapo", epsilon_high: float | None = None, kl_estimator: KLEstimator = "k3",
                 kl_placement: Literal["loss", "reward"] = "loss", kl_clamp: float | None = None,
                 kl_log_ratio_clamp: float | None = None, kl_straight_through: bool = False,
                 kl_importance_weighted: bool = False, aggregation: AggregationMode | None = None,
                 normaliser: Scope | None = None, allow_empty_rows: bool = False, **objective_params: Any) -> None:
        super().__init__()
        owner = type(self).__name__
        policy = policy_settings(owner, epsilon, kl_coeff, objective=objective, epsilon_high=epsilon_high,
                                 kl_estimator=kl_estimator, kl_placement=kl_placement, kl_clamp=kl_clamp,
                                 kl_log_ratio_clamp=kl_log_ratio_clamp, kl_straight_through=kl_straight_through,
                                 kl_importance_weighted=kl_importance_weighted, aggregation=aggregation,
                                 normaliser=normaliser, allow_empty_rows=allow_empty_rows, **objective_params)
        self._use(composer_config(policy, None, owner))

    @classmethod
    def from_config(cls, config: ComposerConfig) -> ComposerGRPOLoss:
        """The loss an experiment config describes (the arguments `loss_section` prints)."""
        arguments = loss_arguments(config)
        if "distill" in arguments:
            raise ConfigError("the config turns self-distillation on (distill.weight > 0) or weights the policy term "
                              "(policy.weight != 1): build composer_torchtune.ComposerCompositeLoss.from_config")
        return cls(**arguments)

    def forward(self, pi_old_logprobs: torch.Tensor, pi_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                advantages: torch.Tensor, padding_masks: torch.Tensor | None = None, *,
                normaliser: Normaliser | None = None) -> tuple[torch.Tensor, ...]:
        """torchtune's `(loss, policy_loss, kl_loss, ratios, clipfrac)`; every metric of the call in `.metrics`."""
        mask = response_mask(pi_logprobs, padding_masks, advantages, pi_old_logprobs=pi_old_logprobs,
                             ref_logprobs=ref_logprobs)
        term = self.policy_term(pi_old_logprobs, pi_logprobs, ref_logprobs, advantages, mask, normaliser)
        self.metrics = term.metrics
        return term.loss, term.policy_loss, term.kl_loss, term.ratios, term.clipfrac


class ComposerCompositeLoss(_TorchtuneLoss):
    """The full composer loss in torchtune: the policy term of ComposerGRPOLoss (same arguments) weighted by
    `policy_weight`, plus self-distillation (channel 2) weighted by `distill.weight`.

    `distill` is composer's `distill` section under its own names (weight, divergence, alpha, support, top_k,
    tail, temperature, is_clip, pointwise_clip, aggregation, normaliser, ...), validated by DistillConfig; None
    or weight 0 turns the term off. forward takes the student's raw logits (B*G, L, V) on the response (the core
    divides by distill.temperature, which must be the rollout temperature) and the teacher as full
    `teacher_logits` on its own context, or as `teacher_topk_ids` / `teacher_topk_log_probs` (B*G, L, K) at that
    temperature (`composer_core.distill.teacher_topk`), and `distill_mask`, the targeted response tokens. The IS
    correction (is_clip) uses pi_old_logprobs, and `token_ids` (the sampled tokens) with full teacher logits.
    Returns torchtune's 5-tuple, the first element `policy_weight * (-(policy_loss - kl_coeff * kl_loss)) +
    distill.weight * metrics['distill/loss']`; `.metrics` holds every metric of the call. A batch whose
    distillation mask is empty adds 0, counts `distill/empty_mask_events` and warns (EmptyDistillMaskWarning).
    """

    def __init__(self, epsilon: float | None = None, kl_coeff: float = TORCHTUNE_KL_COEFF, *,
                 policy_weight: float = 1.0, distill: dict[str, Any] | None = None, **arguments: Any) -> None:
        super().__init__()
        owner = type(self).__name__
        policy = {**policy_settings(owner, epsilon, kl_coeff, **arguments), "weight": policy_weight}
        self._use(composer_config(policy, distill, owner))
        if not any(self.core.enabled.values()):
            raise ConfigError(f"{owner}: policy_weight and distill.weight are both 0; give one a positive weight")

    @classmethod
    def from_config(cls, config: ComposerConfig) -> ComposerCompositeLoss:
        """The loss an experiment config describes (the arguments `loss_section` prints)."""
        return cls(**loss_arguments(config))

    def forward(self, pi_old_logprobs: torch.Tensor, pi_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                advantages: torch.Tensor, padding_masks: torch.Tensor | None = None, *,
                student_logits: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None,
                teacher_topk_ids: torch.Tensor | None = None, teacher_topk_log_probs: torch.Tensor | None = None,
                distill_mask: torch.Tensor | None = None, token_ids: torch.Tensor | None = None,
                normaliser: Normaliser | None = None,
                distill_normaliser: Normaliser | None = None) -> tuple[torch.Tensor, ...]:
        mask = response_mask(pi_logprobs, padding_masks, advantages, pi_old_logprobs=pi_old_logprobs,
                             ref_logprobs=ref_logprobs)
        enabled = self.core.enabled
        if enabled["policy"]:
            term = self.policy_term(pi_old_logprobs, pi_logprobs, ref_logprobs, advantages, mask, normaliser)
            total, metrics = self.config.policy.weight * term.loss, dict(term.metrics)
            logged = term.policy_loss, term.kl_loss, term.ratios, term.clipfrac
        else:
            total, metrics = pi_logprobs.new_zeros(()), {}
            logged = (_scalar(0.0, pi_logprobs),) * 2 + (
                masked_mean(torch.exp(pi_logprobs.detach() - pi_old_logprobs), mask), _scalar(0.0, pi_logprobs))
        teacher = {"student_logits": student_logits, "teacher_logits": teacher_logits,
                   "teacher_topk_ids": teacher_topk_ids, "teacher_topk_log_probs": teacher_topk_log_probs,
                   "distill_mask": distill_mask}
        if not enabled["distill"]:
            given = [name for name, value in teacher.items() if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} given but self-distillation is off (distill.weight 0); set "
                                  "distill.weight > 0 or drop them")
        else:
            distilled, distill_metrics = self.distill_term(pi_old_logprobs, pi_logprobs, mask, token_ids,
                                                           distill_normaliser, **teacher)
            total = total + self.config.distill.weight * distilled
            metrics.update(distill_metrics)
        metrics["loss/total"] = total.item()
        self.metrics = metrics
        return (total, *logged)

    def distill_term(self, pi_old_logprobs: torch.Tensor, pi_logprobs: torch.Tensor, response: torch.Tensor,
                     token_ids: torch.Tensor | None, normaliser: Normaliser | None, *,
                     student_logits: torch.Tensor | None, teacher_logits: torch.Tensor | None,
                     teacher_topk_ids: torch.Tensor | None, teacher_topk_log_probs: torch.Tensor | None,
                     distill_mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Channel 2 on `distill_mask & padding_masks`: the core's `distill_loss` with full teacher logits, or the
        core's precomputed-teacher divergence with top-K tensors."""
        topk = (teacher_topk_ids, teacher_topk_log_probs)
        if student_logits is None or distill_mask is None:
            raise BatchError("self-distillation is on: pass student_logits (batch, length, vocab) and distill_mask "
                             "(batch, length), the response tokens the teacher targets")
        if (teacher_logits is None) == all(t is None for t in topk) or (teacher_logits is None and None in topk):
            raise BatchError("pass the teacher either as teacher_logits, or as both teacher_topk_ids and "
                             "teacher_topk_log_probs")
        mask = as_bool_mask(distill_mask, "distill_mask")
        check_same_shape(tuple(response.shape), "padding_masks", distill_mask=mask)
        mask = mask & response
        if teacher_logits is not None:
            inputs = DistillInputs(student_logits, teacher_logits, mask, response_mask=response, token_ids=token_ids,
                                   old_log_prob=pi_old_logprobs)
            return self.core.distill_loss(inputs, normaliser)
        assert teacher_topk_ids is not None and teacher_topk_log_probs is not None
        return self._distill_topk(student_logits, teacher_topk_ids, teacher_topk_log_probs, mask, response,
                                  pi_old_logprobs, pi_logprobs, normaliser)

    def _distill_topk(self, student_logits: torch.Tensor, ids: torch.Tensor, log_probs: torch.Tensor,
                      mask: torch.Tensor, response: torch.Tensor, pi_old_logprobs: torch.Tensor,
                      pi_logprobs: torch.Tensor, normaliser: Normaliser | None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """`ComposerLoss.distill_loss` for a teacher shipped as top-K tensors (the core takes full logits only).

        The IS weight uses pi_logprobs, the recipe's log-probs of the sampled tokens at the rollout temperature:
        the same numbers the core recomputes from the logits."""
        settings = self.config.distill
        counts = Readout()  # one read: the token count decides the path
        counts.add(tokens=mask.sum(), rows=mask.any(-1).sum(), responses=response.sum())
        read = counts.read()
        tokens = read["tokens"]
        metrics = {"distill/tokens": tokens, "distill/empty_mask": float(tokens == 0),
                   "distill/rows_targeted": read["rows"], "distill/coverage": tokens / max(read["responses"], 1.0)}
        if tokens == 0:
            return self._empty_distill(student_logits, metrics)
        per_token = distill_per_token_precomputed(
            student_logits, ids, log_probs, support=settings.support, alpha=settings.alpha, tail=settings.tail,
            temperature=settings.temperature, pointwise_clip=settings.pointwise_clip, divergence=self.core.divergence,
            mask=mask)
        readout = Readout()
        if settings.is_clip is not None:
            weight = torch.where(mask, importance_weight(pi_logprobs, pi_old_logprobs, settings.is_clip), 0.0)
            per_token = per_token * weight
            readout.add(**{"distill/is_weight_mean": masked_mean(weight, mask)})
        value = aggregate(per_token, mask, settings.aggregation, scoped(normaliser, settings.normaliser))
        readout.add(**{"probe": finite_probe(per_token), "distill/loss": value})
        read = readout.read()
        if not is_finite_sum(read.pop("probe")):  # only then the exact check, which names the bad tokens
            check_finite("distillation per-token loss", per_token, mask)
        return value, {**metrics, **read}

    def _empty_distill(self, student_logits: torch.Tensor, metrics: dict[str, float]
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """No targeted token: 0 with the graph connected, counted with the core's counter, warned once."""
        self.core.empty_distill_events += 1
        metrics["distill/empty_mask_events"] = float(self.core.empty_distill_events)
        metrics["distill/loss"] = 0.0
        if self.core.empty_distill_events == 1:
            warnings.warn("self-distillation is on but the batch has no targeted token (empty distill_mask): the "
                          "distillation term is zero for this batch; see the distill/empty_mask metric",
                          EmptyDistillMaskWarning, stacklevel=4)
        return student_logits.sum() * 0.0, metrics
