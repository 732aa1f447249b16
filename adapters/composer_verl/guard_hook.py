"""The training guard inside the composer VeRL trainer: what it observes, which checkpoint it trusts, how it acts.

VeRL observes a step only when its metrics are complete, after the update is applied (and after a periodic
checkpoint of that step is written). A step's metrics judge the weights the step started from: its rollouts, its
entropy and its loss were computed with them. So a checkpoint VeRL saved after step K (VeRL's `global_step_K`)
is confirmed good when step K + 1 is healthy; until then it is unjudged. VeRL's checkpoints are the guard's
snapshots here: `trainer.save_freq` sets how often there is a state to go back to.

- warn: `guard/<rule>` in VeRL's metrics and a log line.
- rollback: reload the last confirmed checkpoint (actor, critic, composer teacher) and lower the actor's learning
  rate; without one (or past `max_rollbacks`) the run stops instead.
- stop: name the last confirmed checkpoint in the report and point VeRL's resume tracker at it (so
  `trainer.resume_mode=auto` resumes from it, not from a later unjudged one), write `guard_report.json`, and
  raise `GuardStopped` out of VeRL's fit loop; `python -m composer_verl.main` exits with GUARD_EXIT_CODE.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename

from composer_core.files import write_text_atomic
from composer_core.guard import Guard, GuardConfig, StepDecision
from composer_core.guard.metrics import is_finite
from composer_verl.guard_metrics import guard_metrics

Restore = Callable[[str, float], float]  # (checkpoint folder, learning-rate scale) -> the actor's new rate


class GuardStopped(Exception):
    """The guard stopped the run; raised out of VeRL's fit loop so that the job ends with an error, not success."""


@dataclass(frozen=True)
class Checkpoint:
    step: int  # the state after this many updates
    folder: str  # VeRL's global_step_<step> folder


class GuardHook:
    """One run's guard over VeRL's step metrics. `saved` learns of every checkpoint VeRL writes (or resumed from);
    `observe` judges a step, records it in VeRL's metrics and acts; `restore` reloads a checkpoint and sets the
    actor's learning rate to a scale of the configured one."""

    def __init__(self, config: GuardConfig, run_folder: str | Path, restore: Restore) -> None:
        self.guard = Guard(config)
        self.run_folder = Path(run_folder)
        self.restore = restore
        self.unjudged: dict[int, str] = {}
        self.good: Checkpoint | None = None
        self.lr_scale = 1.0

    def saved(self, step: int, folder: str) -> None:
        """VeRL wrote (or the run resumed from) the state after `step` updates; the next step judges it."""
        self.unjudged[step] = folder

    def observe(self, step: int, metrics: MutableMapping[str, Any]) -> StepDecision:
        """Judge step `step` from VeRL's complete metrics of it, add `guard/<rule>` to them, print the findings and
        act on the decision (a stop raises GuardStopped)."""
        canonical = guard_metrics(metrics)
        if "grad_norm" in canonical and not is_finite(canonical["grad_norm"]):
            self.guard.skipped(step, f"grad_norm is {canonical['grad_norm']}: VeRL's engine skipped the optimizer "
                               "step of the mini-batch(es) concerned")
        decision = self.guard.observe(step, canonical)
        self._judge(step, decision.healthy)
        metrics.update(decision.metrics())
        for line in decision.lines():
            print(line, flush=True)
        if decision.action == "rollback":
            self._rollback(decision)
        if decision.action == "stop":
            self._stop(decision)
        return decision

    def write_report(self) -> Path:
        self.run_folder.mkdir(parents=True, exist_ok=True)
        return self.guard.write_report(self.run_folder)

    def _judge(self, step: int, healthy: bool) -> None:
        """A healthy step confirms the checkpoint of the state it started from; older unjudged ones are dropped."""
        started_from = self.unjudged.get(step - 1)
        if healthy and started_from is not None:
            self.good = Checkpoint(step - 1, started_from)
            self.guard.kept_good_state(step - 1)
        self.unjudged = {saved: folder for saved, folder in self.unjudged.items() if saved >= step}

    def _good_on_disk(self) -> Checkpoint | None:
        return self.good if self.good is not None and (Path(self.good.folder) / "actor").is_dir() else None

    def _missing_good(self) -> str:
        if self.good is not None:
            return (f"the last good checkpoint {self.good.folder} is gone (VeRL deletes old ones under "
                    "trainer.max_actor_ckpt_to_keep)")
        return ("no checkpoint is confirmed good yet (VeRL's checkpoint after step K is confirmed when step K+1 is "
                "healthy; trainer.save_freq sets how often VeRL saves)")

    def _rollback(self, decision: StepDecision) -> None:
        good = self._good_on_disk()
        if good is None:
            decision.action, decision.reason = "stop", f"no rollback: {self._missing_good()}"
            return
        self.lr_scale *= self.guard.config.rollback_lr_factor
        rate = self.restore(good.folder, self.lr_scale)
        self.guard.rolled_back(decision.step, rate)
        self.unjudged.clear()  # the abandoned steps' checkpoints
        print(f"guard: step {decision.step}: rolled back to {good.folder} (the state after step {good.step}); the "
              f"actor's learning rate is now {rate:.4g} ({self.lr_scale:g} x the configured one)", flush=True)
        self.write_report()

    def _stop(self, decision: StepDecision) -> None:
        good = self._good_on_disk()
        if good is not None:
            write_text_atomic(get_checkpoint_tracker_filename(str(self.run_folder)), str(good.step),
                              what="VeRL's checkpoint tracker")
        self.guard.stopped(decision, good.folder if good is not None else None)
        report = self.write_report()
        kept = (f"the last good checkpoint is {good.folder} (the state after step {good.step}; VeRL's resume tracker "
                "now points at it)") if good is not None else f"there is no good checkpoint: {self._missing_good()}"
        message = (f"the training guard stopped the run at step {decision.step}: {self.guard.stop['message']}; "
                   f"{kept}; report: {report}")
        print(f"guard: {message}", flush=True)
        raise GuardStopped(message)
