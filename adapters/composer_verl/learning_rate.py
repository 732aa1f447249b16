"""Lowering the actor's learning rate in place, for the guard's rollback on VeRL.

VeRL's FSDP engine drives the optimizer with a `LambdaLR` (transformers' constant or cosine schedule with warmup),
whose `base_lrs` travel in the checkpoint. A rollback loads a checkpoint (and its schedule) and then sets the rate
to `scale` times the configured one, from `initial_lr`, which the schedule records once and no checkpoint changes:
a second rollback to the same checkpoint lowers the rate again instead of restoring it.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, scale: float) -> float:
    """Set every parameter group's rate (and the schedule's base) to `scale` x its configured rate, at the
    schedule's current position; returns the first group's new rate."""
    if not 0 < scale <= 1:
        raise ValueError(f"a learning-rate scale must be in (0, 1], got {scale}")
    if scheduler is not None and not isinstance(scheduler, LambdaLR):
        raise NotImplementedError(f"the guard lowers the learning rate of a LambdaLR schedule (VeRL's constant and "
                                  f"cosine); this engine uses {type(scheduler).__name__}")
    for index, group in enumerate(optimizer.param_groups):
        base = group.setdefault("initial_lr", group["lr"]) * scale
        if scheduler is None:
            group["lr"] = base
            continue
        scheduler.base_lrs[index] = base
        group["lr"] = base * scheduler.lr_lambdas[index](scheduler.last_epoch)
    if scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return float(optimizer.param_groups[0]["lr"])
