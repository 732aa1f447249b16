"""The composition: a weighted sum of the three channels, each with its own mask and normaliser.

`ComposerLoss(config)(policy=..., distill=..., preference=...)` returns the scalar to backpropagate and a
flat dict of metrics. A channel with weight 0 is off; inputs for a channel that is off, or a channel that
is on without inputs, are errors (a silently ignored channel looks like training but is not).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch

from composer_core.config import ComposerConfig
from composer_core.contracts import as_bool_mask, check_finite, check_float, check_same_shape, finite_probe
from composer_core.distill import distill_per_token, importance_weight, on_mask, token_log_probs
from composer_core.errors import BatchError, ConfigError, NonFiniteError
from composer_core.masking import MultiplyMask, SelectMask
from composer_core.objectives.aggregation import Normaliser, aggregate, masked_mean
from composer_core.objectives.base import PolicyBatch
from composer_core.objectives.kl import kl_estimate
from composer_core.preference import PreferenceBatch
from composer_core.readout import Readout


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
        terms = []
        if policy is not None:
            value, channel_metrics = self.policy_loss(policy, normaliser)
            terms.append((self.config.policy.weight, value))
            metrics.update(channel_metrics)
        if distill is not None:
            value, channel_metrics = self.distill_loss(distill, distill_normaliser)
            terms.append((self.config.distill.weight, value))
            metrics.update(channel_metrics)
        if preference is not None:
            value, channel_metrics = self.preference_term(preference)
            terms.append((self.config.preference.weight, value))
            metrics.update(channel_metrics)
        total = _weighted_sum(terms)
        metrics["loss/total"] = total.item()
        return LossOutput(total, metrics)

    def policy_loss(self, inputs: PolicyInputs, normaliser: Normaliser | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Channel 1: the objective's per-token loss (+ KL in the loss), aggregated.

        The value checks cost no read of their own: the loss is computed with padding zeroed by multiplication
        (`MultiplyMask`), then finite probes of the inputs, the metric sums and the loss are read in one
        transfer and the tokens per row in another. When a probe is not finite (NaN or Inf somewhere, which is
        rare) the exact checks name any such value inside the mask; if there is none, the non-finite values are
        padding and the loss is computed again with `SelectMask`.
        """
        mask = self._policy_mask(inputs)
        computed = self._policy_pass(inputs, MultiplyMask(mask), normaliser)
        readings = computed.readout.read()
        if not all(math.isfinite(readings[f"probe/{name}"]) for name in computed.probed):
            _locate_non_finite(inputs, mask)  # raises NonFiniteError naming the tensor and the position
            computed = self._policy_pass(inputs, SelectMask(mask), normaliser)
            readings = computed.readout.read()
        tokens_per_row = computed.tokens_per_row.tolist()
        if not all(tokens_per_row) and not self.config.policy.allow_empty_rows:
            _refuse_empty_rows(tokens_per_row)
        _require_finite("policy", readings["policy/loss"])
        return computed.value, computed.metrics(readings, sum(tokens_per_row), mask)

    def _policy_mask(self, inputs: PolicyInputs) -> torch.Tensor:
        """The policy mask as bool, after the checks that need no values: types, dtypes and shapes."""
        mask = as_bool_mask(inputs.mask, "policy mask")
        if mask.dim() != 2:
            raise BatchError(f"policy mask must be 2-D (batch, response_length), got shape {tuple(mask.shape)}")
        present = {name: tensor for name, tensor in _policy_tensors(inputs).items() if tensor is not None}
        for name, tensor in present.items():
            check_float(name, tensor)
        advantages = present.pop("advantages")
        if advantages.dim() != 1:
            present["advantages"] = advantages
        elif advantages.shape[0] != mask.shape[0]:
            raise BatchError(f"advantages has {advantages.shape[0]} rows but the policy mask has {mask.shape[0]}")
        check_same_shape(tuple(mask.shape), "policy mask", **present)
        return mask

    def _policy_pass(self, inputs: PolicyInputs, padding: SelectMask, normaliser: Normaliser | None) -> _PolicyPass:
        """The policy loss, its checks and metrics still on the device; `padding` zeroes every input outside the
        mask, so that padding reaches neither the loss nor a gradient."""
        settings, mask = self.config.policy, padding.mask
        if inputs.advantages.dim() == 1:
            inputs = replace(inputs, advantages=inputs.advantages.unsqueeze(-1).expand(mask.shape))
        inside = {name: padding.zero_outside(tensor) for name, tensor in _policy_tensors(inputs).items()
                  if tensor is not None}
        probes = {name: finite_probe(tensor) for name, tensor in inside.items()}
        log_prob = inside["log_prob"]
        old = inside["old_log_prob"] if "old_log_prob" in inside else log_prob.detach()
        resolved = self.objective
        token = resolved.objective.per_token(PolicyBatch(log_prob, old, inside["advantages"], mask), resolved.params)
        per_token = token.loss * inside["rollout_weights"] if "rollout_weights" in inside else token.loss
        sums = {f"sum/{name}": padding.sum_inside(stat) for name, stat in token.stats.items()}
        kl = settings.kl
        if kl.coef > 0 and kl.placement == "loss":
            if "ref_log_prob" not in inside:
                raise BatchError("kl.coef > 0 with placement 'loss' needs ref_log_prob in the policy inputs")
            per_token_kl = kl_estimate(log_prob, inside["ref_log_prob"], kl.estimator,
                                       straight_through=kl.straight_through, clamp=kl.clamp,
                                       log_ratio_clamp=kl.log_ratio_clamp)
            sums["sum/kl"] = padding.sum_inside(per_token_kl.detach())
            if kl.importance_weighted:
                per_token_kl = per_token_kl * (log_prob - old).exp()
            per_token = per_token + kl.coef * per_token_kl
        norm = normaliser or Normaliser()
        value = aggregate(per_token, mask, resolved.aggregation, norm if resolved.normaliser == "global"
                          else norm.local())
        readout = Readout()
        readout.add(**{f"probe/{name}": probe for name, probe in probes.items()}, **sums, **{"policy/loss": value})
        return _PolicyPass(value, tuple(probes), readout, token.stats, padding.tokens_per_row())

    def distill_loss(self, inputs: DistillInputs, normaliser: Normaliser | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """Channel 2: divergence to the teacher on the targeted tokens, IS-corrected, aggregated."""
        settings = self.config.distill
        mask = as_bool_mask(inputs.mask, "distill mask")
        if inputs.student_logits.dim() != 3 or tuple(mask.shape) != tuple(inputs.student_logits.shape[:2]):
            raise BatchError(f"distill mask has shape {tuple(mask.shape)} but student_logits has "
                             f"{tuple(inputs.student_logits.shape)}; expected (batch, length) and "
                             "(batch, length, vocab)")
        counts = {"distill/tokens": mask.sum(), "distill/rows_targeted": mask.any(-1).sum()}
        if inputs.response_mask is not None:
            counts["response"] = as_bool_mask(inputs.response_mask, "distill response_mask").sum()
        readout = Readout()
        readout.add(**counts)
        read = readout.read()  # one read: the token count decides the path
        tokens = int(read["distill/tokens"])
        metrics = {"distill/tokens": float(tokens), "distill/empty_mask": float(tokens == 0),
                   "distill/rows_targeted": float(read["distill/rows_targeted"])}
        if inputs.response_mask is not None:
            metrics["distill/coverage"] = tokens / max(int(read["response"]), 1)
        if tokens == 0:
            return self._empty_distill(inputs, metrics)
        per_token = distill_per_token(inputs.student_logits, inputs.teacher_logits, support=settings.support,
                                      alpha=settings.alpha, top_k=settings.top_k, tail=settings.tail,
                                      temperature=settings.temperature, pointwise_clip=settings.pointwise_clip,
                                      divergence=self.divergence, token_ids=inputs.token_ids, mask=mask)
        readout = Readout()
        if settings.is_clip is not None and inputs.old_log_prob is not None:
            weight = self._importance_weight(inputs, mask)
            per_token = per_token * weight
            readout.add(**{"distill/is_weight_mean": masked_mean(weight, mask)})
        norm = normaliser or Normaliser()
        value = aggregate(per_token, mask, settings.aggregation,
                          norm if settings.normaliser == "global" else norm.local())
        # per_token is zero off the mask (`on_mask`): its sum is finite when every targeted term is
        readout.add(**{"probe": finite_probe(per_token), "distill/loss": value})
        read = readout.read()
        if not math.isfinite(read.pop("probe")):
            check_finite("distillation per-token loss", per_token, mask)
        return value, {**metrics, **read}

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
        delta = batch.delta.detach()
        readout = Readout()
        readout.add(**{"preference/loss": value, "preference/accuracy": (delta > 0).float().mean(),
                       "preference/margin": (settings.beta * delta).mean()})
        read = readout.read()
        _require_finite("preference", read["preference/loss"])
        metrics = {"preference/loss": read.pop("preference/loss"), "preference/pairs": float(delta.numel())}
        return value, {**metrics, **read}


def _weighted_sum(terms: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """`sum(weight * value)`, without the multiplications by 1 and the addition to 0 (same value, fewer ops)."""
    weighted = [value if weight == 1.0 else weight * value for weight, value in terms]
    total = weighted[0]
    for term in weighted[1:]:
        total = total + term
    return total


@dataclass(frozen=True)
class _PolicyPass:
    """One computation of the policy channel: its value, the inputs it probed, the readout of its checks and
    sums, the objective's per-token statistics and the masked tokens per row (not read yet)."""

    value: torch.Tensor
    probed: tuple[str, ...]
    readout: Readout
    stats: dict[str, torch.Tensor]
    tokens_per_row: torch.Tensor

    def metrics(self, readings: dict[str, float], tokens: int, mask: torch.Tensor) -> dict[str, float]:
        """The channel's metrics: masked means are sums over the mask divided by its token count (at least 1).

        A statistic whose sum read non-finite may be so on padding only (the fast sum multiplies by the mask):
        its mean is read again, over the mask only.
        """
        count = max(tokens, 1)
        metrics = {f"policy/{name[len('sum/'):]}": value / count for name, value in readings.items()
                   if name.startswith("sum/")}
        for name, stat in self.stats.items():
            if not math.isfinite(metrics[f"policy/{name}"]):
                metrics[f"policy/{name}"] = masked_mean(stat, mask).item()
        # -log p of the sampled tokens: on-policy, an unbiased estimate of the policy's entropy (the guard reads it)
        metrics["policy/entropy_estimate"] = -readings["probe/log_prob"] / count
        return {**metrics, "policy/loss": readings["policy/loss"], "policy/tokens": float(tokens),
                "policy/advantage_mean": readings["probe/advantages"] / count}


def _policy_tensors(inputs: PolicyInputs) -> dict[str, torch.Tensor | None]:
    """The per-token policy tensors under the names errors use."""
    return {"log_prob": inputs.log_prob, "old_log_prob": inputs.old_log_prob, "advantages": inputs.advantages,
            "ref_log_prob": inputs.ref_log_prob, "rollout_weights": inputs.rollout_weights}


def _locate_non_finite(inputs: PolicyInputs, mask: torch.Tensor) -> None:
    """The exact checks: raise NonFiniteError for the first input with NaN or Inf inside the mask (per-sequence
    advantages: in any row); return when the non-finite values are padding only."""
    for name, tensor in _policy_tensors(inputs).items():
        if tensor is not None:
            check_finite(name, tensor, mask if tensor.dim() == mask.dim() else None)


def _refuse_empty_rows(tokens_per_row: list[float]) -> None:
    empty = [row for row, tokens in enumerate(tokens_per_row) if not tokens]
    raise BatchError(f"policy mask has rows with no tokens: {empty[:8]}; a completion with an "
                     "empty mask cannot be trained. Drop those rows, or pass allow_empty_rows=True if "
                     "they are deliberate padding")


def _require_finite(channel: str, value: float) -> None:
    """Refuse a non-finite loss whose inputs were finite inside the mask (the value is already read)."""
    if not math.isfinite(value):
        raise NonFiniteError(f"the {channel} loss is {value} although its inputs were finite inside the mask; "
                             "check extreme log-ratios (set a log_ratio_clamp) or a zero normaliser count")
