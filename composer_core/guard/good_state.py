"""The last good training state, kept in memory: what a guard stop saves and a guard rollback restores. Any
backend whose loop owns a torch model and optimizer uses it (TRL's callback, the torchtune recipe).

It holds the trainable parameters, the optimizer and scheduler state and the composer state (the
self-distillation teacher, the preference and targets cycles), copied to CPU into buffers reused from one
capture to the next, so that keeping it costs one device-to-host copy per step and no allocation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch


def _copy_into(buffer: Any, value: Any) -> Any:
    """`value` copied to CPU, reusing `buffer`'s tensors where the structure and shapes match."""
    if isinstance(value, torch.Tensor):
        if isinstance(buffer, torch.Tensor) and buffer.shape == value.shape and buffer.dtype == value.dtype:
            return buffer.copy_(value.detach())
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        old = buffer if isinstance(buffer, dict) else {}
        return {key: _copy_into(old.get(key), item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        old = buffer if isinstance(buffer, (list, tuple)) and len(buffer) == len(value) else [None] * len(value)
        return type(value)(_copy_into(before, item) for before, item in zip(old, value, strict=True))
    return value


@dataclass
class GoodState:
    """One kept state: `step` counts the updates applied to it; `lr_scale` is the guard's learning-rate scale
    when it was kept (rollbacks lower it)."""

    step: int = -1
    lr_scale: float = 1.0
    parameters: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: Any = None
    scheduler: Any = None
    composer: Any = None

    def capture(self, step: int, lr_scale: float, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None,
                composer_state: dict[str, Any] | None = None) -> None:
        """Keep the state after `step` updates; an optimizer, scheduler or composer state left out is not kept."""
        self.step, self.lr_scale = step, lr_scale
        self.parameters = _copy_into(self.parameters, dict(trainable(model)))
        self.optimizer = _copy_into(self.optimizer, optimizer.state_dict()) if optimizer is not None else None
        self.scheduler = _copy_into(self.scheduler, scheduler.state_dict()) if scheduler is not None else None
        self.composer = _copy_into(self.composer, composer_state)

    def restore_weights(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, parameter in trainable(model):
                parameter.copy_(self.parameters[name])

    def restore_optimizer(self, optimizer: Any, scheduler: Any) -> None:
        # a copy: on the parameters' device, load_state_dict keeps the given tensors, which the next step changes
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if scheduler is not None and self.scheduler is not None:
            scheduler.load_state_dict(copy.deepcopy(self.scheduler))


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every trainable parameter is finite (one reduction per parameter, one sync)."""
    parameters = [parameter for _, parameter in trainable(model)]
    if not parameters:
        return True
    return bool(torch.stack([torch.isfinite(parameter).all() for parameter in parameters]).all())


def scale_learning_rate(optimizer: Any, scheduler: Any, factor: float) -> float:
    """Multiply the learning rate (and the scheduler's base, so its schedule keeps the change) by `factor`;
    returns the first group's new learning rate."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [rate * factor for rate in scheduler.base_lrs]
    return float(optimizer.param_groups[0]["lr"])
