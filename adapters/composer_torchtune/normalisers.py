"""Global normalisers for the loss component, so that N processes train exactly as one with the global batch.

The recipe averages gradients over ranks. A term aggregated with a "global" normaliser then needs the counts of
the global batch (tokens, sequences) and a scale of the world size, which the average divides out again (verl's
convention, composer_core.objectives.aggregation.Normaliser). A "local" term keeps its batch's own counts and no
scale: its average over ranks equals the one-process value when every rank holds the same number of rows, as
this recipe's equal slices do. The constant length of Dr.GRPO is the generation budget on every rank.
"""

from __future__ import annotations

from typing import Any

import torch

from composer_core import Normaliser
from composer_torchtune import distributed


def counts(mask: torch.Tensor, max_length: int, world_size: int) -> Normaliser:
    """The global token and sequence counts of `mask` (all ranks), scaled by the world size."""
    totals = distributed.gather(torch.stack([mask.sum(), mask.any(-1).sum()]).float()[None]).sum(0)
    return Normaliser(num_tokens=totals[0], num_sequences=totals[1], max_length=max_length, scale=float(world_size))


def scoped(scope: str, mask: torch.Tensor, max_length: int, world_size: int) -> Normaliser:
    return counts(mask, max_length, world_size) if scope == "global" else Normaliser(max_length=max_length)


def loss_normalisers(loss_fn: Any, mask: torch.Tensor, distill_mask: torch.Tensor | None, max_length: int,
                     world_size: int) -> dict[str, Normaliser]:
    """`normaliser=` (and `distill_normaliser=`) keyword arguments for a composer loss component; none for a loss
    without a composer config (a foreign `_component_` keeps its own normalisation)."""
    config = getattr(loss_fn, "config", None)
    if config is None:
        return {}
    kwargs = {"normaliser": scoped(config.policy.objective.resolve().normaliser, mask, max_length, world_size)}
    if distill_mask is not None:
        kwargs["distill_normaliser"] = scoped(config.distill.normaliser, distill_mask & mask, max_length, world_size)
    return kwargs
