"""An outer loop around a backend's own training loop (DiLoCo), without either knowing the other.

A backend that accepts an `OuterLoop` calls `begin` once its optimizer exists, `after_step` after every optimizer
step and `end` when its loop ends. The outer loop acts through the optimizer's step hooks
(`torch.optim.Optimizer.register_step_post_hook`), so the backend's loop runs unchanged; `InnerLoop` is all it gets
to see of the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


class Stateful(Protocol):
    """Anything with torch's state_dict / load_state_dict pair."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class InnerLoop:
    """What a backend hands the outer loop.

    model: the policy, unwrapped (no DDP or accelerate wrapper); its trainable parameters are what the outer loop
    syncs. optimizer: the plain torch optimizer whose `step()` applies every inner update (not a wrapper that
    forwards to it: step hooks run on the object whose step runs). step: optimizer steps already applied (a resumed
    run's checkpoint step). state: further state that follows the policy and must be the same on every replica
    (the self-distillation teacher). after_outer_step: what the backend does once the outer loop has replaced the
    policy's weights (the TRL backend sets an EMA teacher to the new weights).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    state: Mapping[str, Stateful] = field(default_factory=dict)
    after_outer_step: Callable[[], None] = lambda: None


class OuterLoop(Protocol):
    """The hook a backend calls; see composer_diloco for the torchft DiLoCo implementation."""

    def begin(self, inner: InnerLoop) -> None:
        """Training starts: hook the optimizer."""

    def after_step(self, step: int) -> bool:
        """After optimizer step `step` (1-based, as the backend counts); True asks the backend to stop now because
        the outer schedule is complete (a replica that joined late and healed from a peer ends with the others)."""

    def end(self, completed: bool) -> None:
        """Training ended: `completed` when the schedule ran out, False when a signal or the guard stopped it."""
