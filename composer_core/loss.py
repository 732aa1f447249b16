"""The composition: a weighted sum of the three channels, each with its own mask and normaliser.

`ComposerLoss(config)(policy=..., distill=..., preference=...)` returns the scalar to backpropagate and a
flat dict of metrics. A channel with weight 0 is off; inputs for a channel that is off, or a channel that
is on without inputs, are errors (a silently ignored channel looks like training but is not).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

from composer_core.config import ComposerConfig
from composer_core.contracts import as_bool_mask, check_finite, check_token_batch
from composer_core.distill import distill_per_token, importance_weight, on_mask, token_log_probs
from composer_core.errors import BatchError, ConfigError, NonFiniteError
from composer_core.objectives.aggregation import Normaliser, aggregate, masked_mean
from composer_core.objectives.base import PolicyBatch
from composer_core.objectives.kl import kl_estimate
from composer_core.preference import PreferenceBatch


class EmptyDistillMaskWarning(UserWarning):
    """Self-distillation was on but no token of the batch was targeted."""


@dataclass(frozen=True)
class PolicyInputs:
    """Channel 1, all (batch, length) except advantages, which may be (batch,) per sequence.

    old_log_prob None means fully on-policy (log_prob.detach()); ref_log_prob is needed for a KL term in
    the loss; rollout_weights are per-token correction weights from the rollout engine (multiplied in).
    """

    log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    old_log_prob: torch.Tensor | None = None
    ref_log_prob: torch.Tensor | None = None
    rollout_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class DistillInputs:
    """Channel 2: logits (batch, length, vocab) of the student and of the teacher on its own context,
    aligned on the student's response tokens; mask (batch, length) selects the targeted tokens.

    response_mask (all response tokens) gives the coverage metric; token_ids are the sampled tokens
    (sampled_token support, IS correction); old_log_prob enables the IS correction (None: on-policy).
    """

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    mask: torch.Tensor
    response_mask: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    old_log_prob: torch.Tensor | None = None


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float]


class ComposerLoss:
    """The three-channel composer loss. Call it once per micro-batch."""

    def __init__(self, config: ComposerConfig | None = None) -> None:
        self.config = config or ComposerConfig()
        self.objective = self.config.policy.objective.resolve()
        self.divergence = self.config.distill.resolve_divergence()
        self.preference_loss = self.config.preference.resolve_loss()
        self.empty_distill_events = 0

    @property
    def enabled(self) -> dict[str, bool]:
        preference = self.config.preference
        return {"policy": self.config.policy.weight > 0, "distill": self.config.distill.weight > 0,
                "preference": preference.weight > 0 and preference.beta > 0}

    def __call__(self, *, policy: PolicyInputs | None = None, distill: DistillInputs | None = None,
                 preference: PreferenceBatch | None = None, normaliser: Normaliser | None = None,
                 distill_normaliser: Normaliser | None = None) -> LossOutput:
        given = {"policy": policy, "distill": distill, "preference": preference}
        for channel, on in self.enabled.items():
            if on and given[channel] is None:
                raise ConfigError(f"the {channel} channel is on (weight > 0) but no {channel} inputs were given")
            if not on and given[channel] is not None:
                raise ConfigError(f"{channel} inputs were given but the {channel} channel is off (weight 0"
                                  f"{' or beta 0' if channel == 'preference' else ''}); enable it or drop them")
        if not any(self.enabled.values()):
            raise ConfigError("every channel is off: give at least one channel a positive weight")
        metrics: dict[str, float] = {}
        total: torch.Tensor | float = 0.0
        if policy is not None:
            value, channel_metrics = self.policy_loss(policy, normaliser)
            total = total + self.config.policy.weight * value
            metrics.update(channel_metrics)
        if distill is not None:
            value, channel_metrics = self.distill_loss(distill, distill_normaliser)
            total = total + self.config.distill.weight * value
            metrics.update(channel_metrics)
        if preference is not None:
            value, channel_metrics = self.preference_term(preference)
            total = total + self.config.preference.weight * value
            metrics.update(channel_metrics)
        assert isinstance(total, torch.Tensor)
        metrics["loss/total"] = total.item()
        return LossOutput(total, metrics)

    def policy_loss(self, inputs: PolicyInputs, normaliser: Normaliser | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Channel 1: the objective's per-token loss (+ KL in the loss), aggregated."""
        settings = self.config.policy
        advantages = inputs.advantages
        per_sequence = advantages.dim() == 1
        mask = check_token_batch("policy mask", inputs.mask, allow_empty_rows=settings.allow_empty_rows,
                                 log_prob=inputs.log_prob, old_log_prob=inputs.old_log_prob,
                                 advantages=None if per_sequence else advantages,
                                 ref_log_prob=inputs.ref_log_prob, rollout_weights=inputs.rollout_weights)
        if per_sequence:
            if advantages.shape[0] != mask.shape[0]:
                raise BatchError(f"advantages has {advantages.shape[0]} rows but the policy mask has {mask.shape[0]}")
            check_finite("advantages", advantages)
            advantages = advantages.unsqueeze(-1).expand(mask.shape)
        inputs = _read_inside(inputs, mask)
        advantages = _inside(mask, advantages)
        old = inputs.log_prob.detach() if inputs.old_log_prob is None else inputs.old_log_prob
        resolved = self.objective
        token = resolved.objective.per_token(PolicyBatch(inputs.log_prob, old, advantages, mask), resolved.params)
        per_token = token.loss if inputs.rollout_weights is None else token.loss * inputs.rollout_weights
        metrics = {f"policy/{name}": masked_mean(stat, mask).item() for name, stat in token.stats.items()}
        # -log p of the sampled tokens: on-policy, an unbiased estimate of the policy's entropy (the guard reads it)
        metrics["policy/entropy_estimate"] = masked_mean(-inputs.log_prob.detach(), mask).item()
        kl = settings.kl
        if kl.coef > 0 and kl.placement == "loss":
            if inputs.ref_log_prob is None:
                raise BatchError("kl.coef > 0 with placement 'loss' needs ref_log_prob in the policy inputs")
            per_token_kl = kl_estimate(inputs.log_prob, inputs.ref_log_prob, kl.estimator,
                                       straight_through=kl.straight_through, clamp=kl.clamp,
                                       log_ratio_clamp=kl.log_ratio_clamp)
            metrics["policy/kl"] = masked_mean(per_token_kl.detach(), mask).item()
            if kl.importance_weighted:
                per_token_kl = per_token_kl * (inputs.log_prob - old).exp()
            per_token = per_token + kl.coef * per_token_kl
        norm = normaliser or Normaliser()
        value = aggregate(per_token, mask, resolved.aggregation, norm if resolved.normaliser == "global"
                          else norm.local())
        _require_finite("policy", value)
        metrics.update({"policy/loss": value.item(), "policy/tokens": float(mask.sum()),
                        "policy/advantage_mean": masked_mean(advantages, mask).item()})
        return value, metrics

    def distill_loss(self, inputs: DistillInputs, normaliser: Normaliser | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """Channel 2: divergence to the teacher on the targeted tokens, IS-corrected, aggregated."""
        settings = self.config.distill
        mask = as_bool_mask(inputs.mask, "distill mask")
        if inputs.student_logits.dim() != 3 or tuple(mask.shape) != tuple(inputs.student_logits.shape[:2]):
            raise BatchError(f"distill mask has shape {tuple(mask.shape)} but student_logits has "
                             f"{tuple(inputs.student_logits.shape)}; expected (batch, length) and "
                             "(batch, length, vocab)")
        tokens = int(mask.sum())
        metrics = {"distill/tokens": float(tokens), "distill/empty_mask": float(tokens == 0),
                   "distill/rows_targeted": float(mask.any(-1).sum())}
        if inputs.response_mask is not None:
            response = as_bool_mask(inputs.response_mask, "distill response_mask")
            metrics["distill/coverage"] = tokens / max(int(response.sum()), 1)
        if tokens == 0:
            return self._empty_distill(inputs, metrics)
        per_token = distill_per_token(inputs.student_logits, inputs.teacher_logits, support=settings.support,
                                      alpha=settings.alpha, top_k=settings.top_k, tail=settings.tail,
                                      temperature=settings.temperature, pointwise_clip=settings.pointwise_clip,
                                      divergence=self.divergence, token_ids=inputs.token_ids, mask=mask)
        if settings.is_clip is not None and inputs.old_log_prob is not None:
            weight = self._importance_weight(inputs, mask)
            per_token = per_token * weight
            metrics["distill/is_weight_mean"] = masked_mean(weight, mask).item()
        check_finite("distillation per-token loss", per_token, mask)
        norm = normaliser or Normaliser()
        value = aggregate(per_token, mask, settings.aggregation,
                          norm if settings.normaliser == "global" else norm.local())
        metrics["distill/loss"] = value.item()
        return value, metrics

    def _importance_weight(self, inputs: DistillInputs, mask: torch.Tensor) -> torch.Tensor:
        """The stopped IS weight on the targeted tokens, zero elsewhere (padding is never read)."""
        if inputs.token_ids is None:
            raise BatchError("the distillation IS correction (is_clip) needs token_ids to score the sampled tokens;"
                             " pass token_ids, or old_log_prob=None when fully on-policy")
        settings = self.config.distill

        def weight(logits: torch.Tensor, token_ids: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
            log_prob = token_log_probs(logits.detach() / settings.temperature, token_ids)
            return importance_weight(log_prob, old_log_prob, settings.is_clip)

        return on_mask(mask, weight, inputs.student_logits, inputs.token_ids, inputs.old_log_prob)

    def _empty_distill(self, inputs: DistillInputs, metrics: dict[str, float]
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """No targeted token: a zero that keeps the graph connected, a metric, and a warning (once)."""
        self.empty_distill_events += 1
        metrics["distill/empty_mask_events"] = float(self.empty_distill_events)
        if self.empty_distill_events == 1:
            warnings.warn("self-distillation is on but the batch has no targeted token (empty SD mask): the "
                          "distillation term is zero for this batch. On agent traces this usually means the "
                          "target turns are pure thinking and thinking was stripped; see the distill/empty_mask "
                          "metric", EmptyDistillMaskWarning, stacklevel=3)
        value = inputs.student_logits.sum() * 0.0
        metrics["distill/loss"] = 0.0
        return value, metrics

    def preference_term(self, batch: PreferenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Channel 3 (composer-core's own research channel, not Cursor's recipe): mean per-pair DPO loss."""
        settings = self.config.preference
        per_pair = self.preference_loss.fn(batch, settings.beta, settings.label_smoothing)
        value = per_pair.mean()
        _require_finite("preference", value)
        delta = batch.delta.detach()
        return value, {"preference/loss": value.item(), "preference/pairs": float(delta.numel()),
                       "preference/accuracy": (delta > 0).float().mean().item(),
                       "preference/margin": (settings.beta * delta).mean().item()}


def _inside(mask: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor | None:
    """`values` where `mask` is true, zero elsewhere: padding (NaN, Inf) reaches neither the loss nor a gradient."""
    return None if values is None else torch.where(mask, values, torch.zeros((), dtype=values.dtype))


def _read_inside(inputs: PolicyInputs, mask: torch.Tensor) -> PolicyInputs:
    """The policy tensors with every position outside the mask zeroed (see `_inside`)."""
    return replace(inputs, log_prob=_inside(mask, inputs.log_prob), old_log_prob=_inside(mask, inputs.old_log_prob),
                   ref_log_prob=_inside(mask, inputs.ref_log_prob),
                   rollout_weights=_inside(mask, inputs.rollout_weights))


def _require_finite(channel: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value.detach())):
        raise NonFiniteError(f"the {channel} loss is {value.item()} although its inputs were finite inside the mask; "
                         "check extreme log-ratios (set a log_ratio_clamp) or a zero normaliser count")
