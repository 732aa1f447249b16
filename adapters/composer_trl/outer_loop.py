"""An outer loop (composer_core.outer_loop, e.g. DiLoCo) around TRL's training loop, as a TrainerCallback.

`begin` gets the unwrapped policy and the torch optimizer under accelerate's `AcceleratedOptimizer` (which forwards
`step()` without ever running torch's optimizer hooks on itself), so hooks the outer loop registers fire on every
inner update. The self-distillation teacher travels as state a replica must share; after each outer step an EMA
teacher is set to the new policy weights (frozen and trust-region teachers hold the initial weights and stay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from composer_core.outer_loop import InnerLoop, OuterLoop

if TYPE_CHECKING:
    from composer_trl.trainer import ComposerGRPOTrainer


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer whose `step()` updates the weights, under any wrappers that forward to an `.optimizer`."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"an outer loop needs a torch optimizer, got {type(optimizer).__name__}")
    return optimizer


def teacher_to_policy(trainer: ComposerGRPOTrainer) -> None:
    """Set an EMA teacher to the current policy (one EMA step at rate 1 is an exact copy: torch.lerp returns the
    end point at weight 1)."""
    teacher = trainer.teacher
    if teacher is None or teacher.strategy != "ema":
        return
    rate = teacher.rate  # type: ignore[attr-defined]  (both EMA teachers have one)
    teacher.rate = 1.0  # type: ignore[attr-defined]
    try:
        teacher.after_step(trainer.accelerator.unwrap_model(trainer.model))
    finally:
        teacher.rate = rate  # type: ignore[attr-defined]


class OuterLoopCallback(TrainerCallback):
    """Calls `outer_loop`'s begin / after_step / end from TRL's loop; its stop request ends training."""

    def __init__(self, trainer: ComposerGRPOTrainer, outer_loop: OuterLoop) -> None:
        self.trainer = trainer
        self.outer_loop = outer_loop
        self.schedule_done = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        shared = {"teacher": trainer.teacher} if trainer.teacher is not None else {}
        self.outer_loop.begin(InnerLoop(model=trainer.accelerator.unwrap_model(kwargs["model"]),
                                        optimizer=torch_optimizer(kwargs["optimizer"]), step=state.global_step,
                                        state=shared, after_outer_step=lambda: teacher_to_policy(trainer)))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.outer_loop.after_step(state.global_step):
            self.schedule_done = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        guard = self.trainer.guard
        stopped = guard is not None and guard.stopped is not None  # the guard's last good state is what it keeps
        self.outer_loop.end(completed=not stopped and (self.schedule_done or state.global_step >= state.max_steps))
