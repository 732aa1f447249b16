"""Aggregation of a per-token loss into a scalar, with an explicit normaliser.

The modes carry verl's names. The normaliser says which counts form the denominator: the local batch's
own (the default), or global counts over all ranks and accumulation steps, which makes the loss
data-parallel invariant: summing the aggregated loss of every chunk gives the loss of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from composer_core.errors import ConfigError

AggregationMode = Literal["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum",
                          "seq-mean-token-sum-norm"]
AGGREGATION_MODES: tuple[str, ...] = get_args(AggregationMode)


@dataclass(frozen=True)
class Normaliser:
    """Denominators for aggregation; None means "count it in the batch at hand".

    num_tokens: masked tokens in the global batch (token-mean); TRL's `num_items_in_batch`, verl's
        `batch_num_tokens`.
    num_sequences: sequences with at least one masked token in the global batch (seq-mean-*); verl's
        `global_batch_size`.
    max_length: the constant length of seq-mean-token-sum-norm (Dr.GRPO); TRL uses `max_completion_length`,
        verl `loss_scale_factor` or else the padded length.
    scale: a final multiplier: verl multiplies by `dp_size` because data-parallel gradients are averaged;
        TRL divides some modes by the gradient-accumulation steps.
    """

    num_tokens: float | torch.Tensor | None = None
    num_sequences: float | torch.Tensor | None = None
    max_length: int | None = None
    scale: float = 1.0

    def local(self) -> Normaliser:
        """The same normaliser with the counts taken from the batch at hand (keeps length and scale)."""
        return Normaliser(max_length=self.max_length, scale=self.scale)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is true; values outside the mask are never read (NaN-safe)."""
    masked = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the mask; 0 for an empty mask (metrics only: losses use `aggregate`)."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, normaliser: Normaliser | None = None) -> torch.Tensor:
    """Reduce a (batch, length) per-token loss over a bool mask to a scalar."""
    norm = normaliser or Normaliser()
    if mode == "token-mean":
        denominator = mask.sum() if norm.num_tokens is None else norm.num_tokens
        total = masked_sum(loss, mask) / _at_least_one(denominator)
    elif mode == "token-sum":
        total = masked_sum(loss, mask)
    elif mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        tokens_per_row = mask.sum(dim=-1)
        per_row = masked_sum(loss, mask, dim=-1)
        if mode == "seq-mean-token-mean":
            per_row = per_row / tokens_per_row.clamp(min=1)
        rows = (tokens_per_row > 0).sum() if norm.num_sequences is None else norm.num_sequences
        total = per_row.sum() / _at_least_one(rows)
        if mode == "seq-mean-token-sum-norm":
            total = total / (norm.max_length if norm.max_length is not None else mask.shape[-1])
    else:
        raise ConfigError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(AGGREGATION_MODES)}")
    return total * norm.scale


def _at_least_one(count: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(count, torch.Tensor):
        return count.clamp(min=1)
    return max(count, 1)
