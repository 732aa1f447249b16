"""Per-token policy surrogates (channel 1) and their settings.

Each function maps a PolicyBatch to a per-token loss to be minimised, plus per-token statistics. None of
them aggregates: that is `aggregation.aggregate`'s job, with an explicit normaliser.
"""

from __future__ import annotations

import torch
from pydantic import Field

from composer_core.objectives.base import ObjectiveParams, PolicyBatch, TokenLoss


class ClipParams(ObjectiveParams):
    """PPO-style clipping. dual_clip_c bounds the loss of negative advantages (verl always applies 3.0;
    TRL never); log_ratio_clamp clamps log r before exp (verl 20; TRL none). clip_ratio_low >= 1 puts the
    lower bound at or below 0, which a ratio never crosses: no lower clip (verl accepts it; so does every
    objective here)."""

    clip_ratio_low: float = Field(0.2, ge=0.0)
    clip_ratio_high: float = Field(0.2, ge=0.0)
    dual_clip_c: float | None = Field(None, gt=1.0)
    log_ratio_clamp: float | None = Field(20.0, gt=0.0)


class SequenceClipParams(ObjectiveParams):
    """GSPO: clip bounds on the sequence ratio; log_ratio_max clamps its log from above (verl 10)."""

    clip_ratio_low: float = Field(3e-4, ge=0.0)
    clip_ratio_high: float = Field(4e-4, ge=0.0)
    log_ratio_max: float | None = Field(10.0, gt=0.0)


class CISPOParams(ObjectiveParams):
    """CISPO: the importance weight is clipped to [1 - low, 1 + high] and stopped.

    lower_clip False drops the lower bound: TRL's form, `min(r, epsilon_high)`, is clip_ratio_high =
    epsilon_high - 1 with lower_clip False. verl's form clips both sides with its clip ratios.
    """

    clip_ratio_low: float = Field(0.2, ge=0.0)
    clip_ratio_high: float = Field(4.0, ge=0.0)
    lower_clip: bool = False
    log_ratio_clamp: float | None = Field(20.0, gt=0.0)


class SAPOParams(ObjectiveParams):
    """SAPO soft gate temperatures for positive and negative advantages (both backends: 1.0 and 1.05)."""

    tau_pos: float = Field(1.0, gt=0.0)
    tau_neg: float = Field(1.05, gt=0.0)
    log_ratio_clamp: float | None = Field(20.0, gt=0.0)


class NoParams(ObjectiveParams):
    """An objective without settings."""


def log_ratio(batch: PolicyBatch, clamp: float | None) -> torch.Tensor:
    """log r = log pi - log pi_old, optionally clamped symmetrically before it is exponentiated."""
    value = batch.log_prob - batch.old_log_prob
    return value if clamp is None else value.clamp(-clamp, clamp)


def ppo_clip(batch: PolicyBatch, params: ClipParams) -> TokenLoss:
    """`-min(r A, clip(r, 1-lo, 1+hi) A)`, with the optional dual clip `min(., -c A)` for A < 0."""
    log_r = log_ratio(batch, params.log_ratio_clamp)
    ratio = log_r.exp()
    advantages = batch.advantages
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - params.clip_ratio_low, 1 + params.clip_ratio_high)
    loss = torch.maximum(unclipped, clipped)
    stats = {"clipfrac": (clipped > unclipped).float(), "approx_kl": -log_r.detach()}
    if params.dual_clip_c is not None:
        bound = -advantages * params.dual_clip_c
        negative = advantages < 0
        stats["clipfrac_lower"] = ((loss > bound) & negative).float()
        loss = torch.where(negative, torch.minimum(loss, bound), loss)
    return TokenLoss(loss, stats)


def gspo(batch: PolicyBatch, params: SequenceClipParams) -> TokenLoss:
    """GSPO in token form: ratio `sg(s_i) * pi / sg(pi)` with `s_i = exp(mean_t log r_t)` over the mask.

    Its value is the sequence ratio on every token and its gradient that of the sequence-level objective
    (TRL's `importance_sampling_level="sequence"` gives the same value and gradient).
    """
    log_r = batch.log_prob - batch.old_log_prob
    mask = batch.mask
    zero = torch.zeros((), dtype=log_r.dtype, device=log_r.device)
    seq_log_r = torch.where(mask, log_r, zero).sum(-1) / mask.sum(-1).clamp(min=1)
    token_log_ratio = batch.log_prob - batch.log_prob.detach() + seq_log_r.detach().unsqueeze(-1)
    if params.log_ratio_max is not None:
        token_log_ratio = token_log_ratio.clamp(max=params.log_ratio_max)
    ratio = token_log_ratio.exp()
    unclipped = -batch.advantages * ratio
    clipped = -batch.advantages * ratio.clamp(1 - params.clip_ratio_low, 1 + params.clip_ratio_high)
    stats = {"clipfrac": (clipped > unclipped).float(), "approx_kl": -log_r.detach()}
    return TokenLoss(torch.maximum(unclipped, clipped), stats)


def cispo(batch: PolicyBatch, params: CISPOParams) -> TokenLoss:
    """`-sg(clip(r)) A log pi`: REINFORCE with a clipped, stopped importance weight."""
    log_r = log_ratio(batch, params.log_ratio_clamp)
    ratio = log_r.exp().detach()
    low = 1 - params.clip_ratio_low if params.lower_clip else None
    weight = ratio.clamp(min=low, max=1 + params.clip_ratio_high)
    loss = -weight * batch.advantages * batch.log_prob
    return TokenLoss(loss, {"clipfrac": (weight != ratio).float(), "approx_kl": -log_r.detach()})


def sapo(batch: PolicyBatch, params: SAPOParams) -> TokenLoss:
    """SAPO: a soft sigmoid gate `4/tau * sigmoid(tau (r - 1))` replaces the hard clip; tau by advantage sign."""
    log_r = log_ratio(batch, params.log_ratio_clamp)
    ratio = log_r.exp()
    advantages = batch.advantages  # temperatures in its dtype, as VeRL builds them (float32 would round them)
    tau = torch.where(advantages > 0, advantages.new_tensor(params.tau_pos), advantages.new_tensor(params.tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1)) * (4 / tau)
    return TokenLoss(-gate * advantages, {"approx_kl": -log_r.detach()})


def reinforce(batch: PolicyBatch, params: NoParams) -> TokenLoss:
    """Plain REINFORCE: `-A log pi` (no ratio, no clip; verl's `gpg`)."""
    return TokenLoss(-batch.advantages * batch.log_prob)
