"""The training guard on the TRL backend: a callback that judges every optimizer step before it is applied.

Before each optimizer step (the gradients are computed, the weights not yet changed) the step's metrics go to
the guard. The state the step started from is kept as the last good one when every stop/rollback rule is quiet
about it. A step whose loss, gradients or resulting weights are not finite is never applied. `warn` logs
`guard/<rule>` and a line; `stop` restores the last good state, saves it as a checkpoint, writes
guard_report.json and ends training; `rollback` restores it, lowers the learning rate and goes on.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from composer_core.guard import REPORT_FILE, Guard, StepDecision
from composer_core.guard.good_state import GoodState, scale_learning_rate, weights_finite
from composer_trl.guard_metrics import NewMetricValues
from composer_trl.run_folder import is_complete

if TYPE_CHECKING:
    from composer_trl.trainer import ComposerGRPOTrainer


class TrainingGuard(TrainerCallback):
    """Runs `guard` over `trainer`'s steps; `report_folder` receives guard_report.json (default: the trainer's
    output_dir). After training, `decision` is the stop decision when the guard stopped the run."""

    def __init__(self, trainer: ComposerGRPOTrainer, guard: Guard, report_folder: Path | None = None) -> None:
        self.trainer = trainer
        self.guard = guard
        self.report_folder = report_folder
        self.good = GoodState()
        self.lr_scale = 1.0
        self.new_values = NewMetricValues()
        self.stopped: StepDecision | None = None
        self._skip = False
        self._loss: torch.Tensor | float = 0.0
        self._grad_norm: float | None = None

    # ---- what the trainer reports of each step -------------------------------------------------------------------

    def record_loss(self, loss: torch.Tensor | float) -> None:
        """One micro-step's loss (NaN for a micro-step whose loss could not be computed)."""
        self._loss = self._loss + (loss.detach() if isinstance(loss, torch.Tensor) else loss)

    def record_grad_norm(self, grad_norm: Any) -> None:
        self._grad_norm = None if grad_norm is None else float(grad_norm)

    def _step_values(self) -> dict[str, float]:
        values = {"loss": float(self._loss)}
        if self._grad_norm is not None:
            values["grad_norm"] = self._grad_norm
        self._loss, self._grad_norm = 0.0, None
        return values

    # ---- before the update: observe, keep the good state, act ---------------------------------------------------

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step + 1
        metrics = {**self.new_values.read(self.trainer._metrics["train"]), **self._step_values()}
        non_finite = not all(math.isfinite(metrics.get(name, 0.0)) for name in ("loss", "grad_norm"))
        if args.fp16 and not math.isfinite(metrics.get("grad_norm", 0.0)):
            metrics.pop("grad_norm")  # fp16's loss scaler meets inf gradients by design: the step is skipped only
        decision = self.guard.observe(step, metrics)
        if decision.healthy and not non_finite and (step - 1) % self.guard.config.snapshot_every == 0:
            self._keep_good_state(step - 1, kwargs["model"], kwargs["optimizer"], kwargs["lr_scheduler"])
        self._skip = non_finite or decision.action in ("stop", "rollback")
        if non_finite:
            self.guard.skipped(step, "non-finite " + " and ".join(
                name for name in ("loss", "grad_norm") if not math.isfinite(metrics.get(name, 0.0))))
        self._act(decision, args, state, control, kwargs)
        if self._skip:
            kwargs["optimizer"].zero_grad(set_to_none=True)  # the optimizer step leaves every weight as it is

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An update that made a weight non-finite is taken back at once (the next forward would be NaN)."""
        model = self._model(kwargs["model"])
        if self._skip or weights_finite(model):
            return
        step = state.global_step + 1
        self.guard.skipped(step, "the update made a weight non-finite; the last good state is restored")
        decision = self.guard.non_finite_update(step)
        if self.good.step >= 0:
            self._restore(kwargs["optimizer"], kwargs["lr_scheduler"], model)
        self._act(decision, args, state, control, kwargs, restored=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stopped is not None:
            control.should_save = False  # the last good state is saved already; the current step is not good
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.guard.write_report(self.report_folder or Path(args.output_dir))

    def summary(self) -> dict[str, Any]:
        """For the run summary: whether the guard stopped the run, why, and where its report is."""
        report = self.guard.report()
        return {"stopped": report["stopped"] is not None, "stop": report["stopped"],
                "findings": len(report["findings"]), "rollbacks": len(report["rollbacks"]),
                "skipped_steps": len(report["skipped_steps"]),
                "report": str((self.report_folder or Path(self.trainer.args.output_dir)) / REPORT_FILE)}

    # ---- actions ----------------------------------------------------------------------------------------------

    def _act(self, decision: StepDecision, args: Any, state: Any, control: Any, kwargs: dict[str, Any],
             restored: bool = False) -> None:
        for line in decision.lines():
            print(line, file=sys.stderr)
        for name, value in decision.metrics().items():
            self.trainer._metrics["train"][name].append(value)
        if decision.action not in ("stop", "rollback"):
            return
        model, optimizer, scheduler = self._model(kwargs["model"]), kwargs["optimizer"], kwargs["lr_scheduler"]
        if self.good.step < 0:  # nothing good was ever kept: the run stops with what it has
            decision.action, decision.reason = "stop", "no good state was kept before the first step"
        elif not restored:
            self._restore(optimizer, scheduler, model)
        if decision.action == "rollback":
            self.lr_scale *= self.guard.config.rollback_lr_factor
            rate = scale_learning_rate(optimizer, scheduler, self.lr_scale / self.good.lr_scale)
            self.guard.rolled_back(decision.step, rate)
            print(f"guard: step {decision.step}: rolled back to step {self.good.step}, learning rate now {rate:.3g}",
                  file=sys.stderr)
            return
        checkpoint = self._save_good_state(args, state) if self.good.step >= 0 else None
        self.guard.stopped(decision, str(checkpoint) if checkpoint else None)
        self.stopped = decision
        control.should_training_stop = True
        print(f"guard: step {decision.step}: stopping; the last good state (step {self.good.step}) is "
              f"{checkpoint or 'not saved: no step was good'}", file=sys.stderr)

    def _keep_good_state(self, step: int, model: Any, optimizer: Any, scheduler: Any) -> None:
        self.good.capture(step, self.lr_scale, self._model(model), optimizer, scheduler,
                          self.trainer.composer_state())
        self.guard.kept_good_state(step)

    def _restore(self, optimizer: Any, scheduler: Any, model: Any) -> None:
        self.good.restore_weights(model)
        self.good.restore_optimizer(optimizer, scheduler)
        if self.trainer.teacher is not None:
            self.trainer.teacher.load_state_dict(self.good.composer["teacher"])

    def _save_good_state(self, args: Any, state: Any) -> Path:
        """The restored last good state as a full TRL checkpoint named after its step (kept if one is there)."""
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.good.step}"
        if is_complete(folder):
            return folder
        current = state.global_step
        state.global_step = self.good.step
        try:
            self.trainer._save_checkpoint(self.trainer.model, trial=None)
            if state.is_world_process_zero:
                self.trainer.save_composer_state(folder, self.good.composer)
        finally:
            state.global_step = current
        return folder

    def _model(self, model: Any) -> Any:
        return self.trainer.accelerator.unwrap_model(model)


def is_non_finite_sampling(error: RuntimeError) -> bool:
    """Whether sampling failed because the model's probabilities were NaN or infinite (torch.multinomial's
    error): the weights have diverged, which the guard handles like a non-finite loss."""
    message = str(error)
    return "probability tensor contains" in message and "nan" in message
