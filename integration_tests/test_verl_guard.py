"""The training guard in the composer VeRL trainer, on CPU.

The trainer is VeRL's V1 trainer class built from VeRL's own composed config, and its checkpoints go through
VeRL's own `_save_checkpoint` (folders, data-loader state, the resume tracker). Only what needs a GPU is replaced:
the actor worker group writes and reads its state as real files and keeps a real optimizer with VeRL's own
learning-rate schedule, and the rollout replicas' weight sync is recorded. The steps' metrics are VeRL's names,
fed in the order VeRL's fit loop produces them: update, periodic checkpoint, then the complete metrics.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

verl = pytest.importorskip("verl")
hydra = pytest.importorskip("hydra")
ray = pytest.importorskip("ray")

from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path  # noqa: E402
from verl.utils.torch_functional import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup  # noqa: E402

from composer_core.errors import ConfigError  # noqa: E402
from composer_core.guard import GUARD_EXIT_CODE, GUARD_METRICS, REPORT_FILE  # noqa: E402
from composer_verl import main as launcher  # noqa: E402
from composer_verl.guard_hook import GuardStopped  # noqa: E402
from composer_verl.guard_metrics import UNAVAILABLE, VERL_SOURCES, guard_metrics  # noqa: E402
from composer_verl.learning_rate import scale_learning_rate  # noqa: E402

pytestmark = pytest.mark.backend("verl")

BASE = ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.policy_loss.loss_mode=composer_dr_grpo", "trainer.use_v1=true",
        "trainer.v1.trainer_mode=composer", "algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.optim.lr=0.001"]
# one step's metrics as VeRL 0.9's sync trainer reports them (reduce_metrics gives numpy floats)
VERL_STEP = {"actor/loss": 0.12, "actor/grad_norm": 0.8, "actor/pg_loss": 0.1, "actor/pg_clipfrac": 0.05,
             "actor/ppo_kl": 0.001, "actor/pg_clipfrac_lower": 0.0, "actor/kl_loss": 0.02, "actor/kl_coef": 0.001,
             "actor/lr": 1e-6, "actor/entropy": 1.3, "actor/distill/loss": 0.03, "actor/distill/coverage": 0.6,
             "actor/distill/tokens": 300.0, "composer/distill_rows": 0.5, "composer/distill_empty_batch": 0.0,
             "critic/score/mean": 0.4, "critic/score/max": 1.0, "critic/rewards/mean": 0.38,
             "critic/advantages/mean": 0.0, "response_length/mean": 212.0, "response_length/clip_ratio": 0.1,
             "response_length_non_aborted/mean": 212.0, "timing_s/step": 31.5, "training/global_step": 7,
             "perf/mfu/actor": 0.31}


# ---------------------------------------------------------------- metric names

def test_verl_metrics_map_onto_the_canonical_names() -> None:
    import numpy as np

    step = {key: np.float64(value) for key, value in VERL_STEP.items()}
    assert guard_metrics(step) == pytest.approx({
        "loss": 0.12, "grad_norm": 0.8, "reward_mean": 0.4, "entropy": 1.3, "kl": 0.02, "clip_fraction": 0.05,
        "response_length": 212.0, "truncated_fraction": 0.1, "distill_coverage": 0.6, "distill_empty": 0.0,
        "teacher_divergence": 0.05})  # 0.03 per response token over a coverage of 0.6
    assert set(VERL_SOURCES) | {"teacher_divergence"} | set(UNAVAILABLE) == set(GUARD_METRICS)


def test_kl_in_the_reward_and_missing_channels() -> None:
    step = {"actor/grad_norm": math.inf, "actor/reward_kl_penalty": 0.3, "actor/distill/loss": 0.0,
            "actor/distill/coverage": 0.0, "val-core/score": "not a number"}
    found = guard_metrics(step)
    assert found["kl"] == 0.3 and math.isinf(found["grad_norm"])
    assert "teacher_divergence" not in found  # nothing targeted: no divergence per targeted token
    assert guard_metrics({"actor/distill/loss": math.nan, "actor/distill/coverage": 0.0})["teacher_divergence"] != 0


# ---------------------------------------------------------------- learning rate

@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_rollback_rate_is_a_scale_of_the_configured_one_whatever_the_checkpoint_holds(schedule: str) -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=2) if schedule == "constant" else \
        get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=20)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict(), optimizer.state_dict()
    unscaled = optimizer.param_groups[0]["lr"]
    assert scale_learning_rate(optimizer, scheduler, 0.5) == pytest.approx(unscaled * 0.5)
    scheduler.load_state_dict(saved[0])  # a second rollback to the same checkpoint
    optimizer.load_state_dict(saved[1])
    assert scale_learning_rate(optimizer, scheduler, 0.25) == pytest.approx(unscaled * 0.25)
    assert scheduler.get_last_lr()[0] == pytest.approx(unscaled * 0.25)
    optimizer.step()
    scheduler.step()  # the schedule goes on from the lowered base
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.25e-3)
    reference = get_constant_schedule_with_warmup(fresh, 2) if schedule == "constant" else \
        get_cosine_schedule_with_warmup(fresh, num_warmup_steps=2, num_training_steps=20)
    for _ in range(6):
        fresh.step()
        reference.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(fresh.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="scale"):
        scale_learning_rate(optimizer, scheduler, 1.5)


# ---------------------------------------------------------------- the trainer

class FileActorGroup:
    """The actor worker group as the guard uses it: state saved to and loaded from real files, a real optimizer
    under VeRL's constant schedule (whose rate the rollback lowers)."""

    def __init__(self) -> None:
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.optimizer = torch.optim.AdamW([self.weight], lr=1e-3)
        self.scheduler = get_constant_schedule_with_warmup(self.optimizer, num_warmup_steps=0)
        self.loaded: list[str] = []

    def update(self, step: int) -> None:
        self.weight.data.fill_(float(step))

    def save_checkpoint(self, local_path: str, hdfs_path: str | None = None, global_step: int = 0,
                        max_ckpt_to_keep: int | None = None) -> None:
        os.makedirs(local_path, exist_ok=True)
        torch.save({"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict()}, os.path.join(local_path, "state.pt"))

    def load_checkpoint(self, local_path: str, hdfs_path: str | None = None, del_local_after_load: bool = False
                        ) -> None:
        state = torch.load(os.path.join(local_path, "state.pt"), weights_only=False)
        self.weight.data.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loaded.append(local_path)

    def scale_learning_rate(self, scale: float) -> list[float]:
        return [scale_learning_rate(self.optimizer, self.scheduler, scale)]


class Replicas:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def sleep_replicas(self) -> None:
        self.calls.append("sleep")

    def update_weights(self, global_steps: int) -> None:
        self.calls.append(f"update_weights@{global_steps}")


class Logged:
    def __init__(self) -> None:
        self.steps: dict[int, dict[str, Any]] = {}

    def log(self, data: dict[str, Any], step: int) -> None:
        self.steps[step] = dict(data)


class DataLoader:
    def state_dict(self) -> dict[str, int]:
        return {"position": 0}


def composer_trainer(folder: Path, *overrides: str, save_freq: int = 1, total_steps: int = 20) -> Any:
    """The composer trainer from VeRL's composed config, with what VeRL's _setup and fit would have created."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
        config = hydra.compose(config_name="ppo_trainer", overrides=[
            *BASE, f"trainer.default_local_dir={folder}", f"trainer.save_freq={save_freq}", *overrides])
    trainer = get_trainer_cls("composer")(config)
    trainer.actor_rollout_wg, trainer.checkpoint_manager = FileActorGroup(), Replicas()
    trainer.train_dataloader, trainer.logger = DataLoader(), Logged()
    trainer.global_steps, trainer.total_training_steps = 0, total_steps
    return trainer


def run_step(trainer: Any, step: int, **metrics: float) -> dict[str, Any]:
    """One step of VeRL's fit loop as the guard sees it: the update, the periodic checkpoint, the metrics."""
    trainer.global_steps = step
    trainer.actor_rollout_wg.update(step)
    if step % trainer.config.trainer.save_freq == 0:
        trainer._save_checkpoint()
    values = {**VERL_STEP, "actor/grad_norm": 1.0 + 0.01 * step, **metrics}
    trainer._guard(trainer.guard_hook, step, values)
    return values


def report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / REPORT_FILE).read_text())


def test_warn_adds_the_rule_to_verls_metrics_and_the_run_goes_on(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    trainer = composer_trainer(tmp_path, total_steps=7)
    for step in range(1, 7):
        assert "guard/grad_norm_spike" not in run_step(trainer, step)
    metrics = run_step(trainer, 7, **{"actor/grad_norm": 50.0})  # the last step: the report is written
    assert metrics["guard/grad_norm_spike"] == 1.0
    assert "guard: step 7: grad_norm_spike (warn)" in capsys.readouterr().out
    written = report(tmp_path)
    assert written["stopped"] is None and written["exit_code"] == 0 and written["last_good_step"] == 6
    assert [finding["rule"] for finding in written["findings"]] == ["grad_norm_spike"]


def test_a_non_finite_step_is_reported_skipped_and_stops_at_the_last_confirmed_checkpoint(tmp_path: Path) -> None:
    trainer = composer_trainer(tmp_path, save_freq=2)
    for step in range(1, 5):
        run_step(trainer, step)  # checkpoints 2 and 4; step 3 confirms 2, step 5 judges 4
    with pytest.raises(GuardStopped, match="stopped the run at step 5") as stop:
        run_step(trainer, 5, **{"actor/grad_norm": math.nan, "actor/loss": math.nan})
    good = str(tmp_path / "global_step_2")
    assert good in str(stop.value)
    written = report(tmp_path)
    assert written["exit_code"] == GUARD_EXIT_CODE and written["stopped"]["rules"] == ["non_finite"]
    assert written["stopped"]["checkpoint"] == good and written["last_good_step"] == 2
    assert written["skipped_steps"][0]["step"] == 5 and "skipped" in written["skipped_steps"][0]["reason"]
    assert (tmp_path / "global_step_4" / "actor").is_dir()  # VeRL's later checkpoint stays, unjudged
    assert find_latest_ckpt_path(str(tmp_path)) == good  # VeRL's resume=auto now takes the good one
    assert trainer.logger.steps[5]["guard/non_finite"] == 1.0  # the stopped step's metrics still reach the loggers


def test_stop_without_a_confirmed_checkpoint_says_so(tmp_path: Path) -> None:
    trainer = composer_trainer(tmp_path, "+composer.guard.rules.non_finite.action=rollback", save_freq=5)
    run_step(trainer, 1)
    with pytest.raises(GuardStopped, match="no checkpoint is confirmed good yet"):
        run_step(trainer, 2, **{"actor/grad_norm": math.inf})
    written = report(tmp_path)
    assert written["stopped"]["checkpoint"] is None and "no rollback" in written["stopped"]["message"]
    assert trainer.actor_rollout_wg.loaded == []


def test_rollback_restores_the_last_good_checkpoint_with_a_lower_rate_then_stops_at_the_limit(tmp_path: Path) -> None:
    trainer = composer_trainer(tmp_path, "+composer.guard.rules.non_finite.action=rollback",
                               "+composer.guard.max_rollbacks=1", "+composer.guard.rollback_lr_factor=0.5")
    actor = trainer.actor_rollout_wg
    for step in range(1, 4):
        run_step(trainer, step)
    run_step(trainer, 4, **{"actor/grad_norm": math.nan})  # judges checkpoint 3 bad: back to 3's predecessor
    assert actor.loaded == [str(tmp_path / "global_step_2" / "actor")]
    assert actor.weight.item() == 2.0 and actor.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert trainer.checkpoint_manager.calls == ["sleep", "update_weights@4"]  # replicas get the restored weights
    written = report(tmp_path)
    assert written["rollbacks"] == [{"step": 4, "restored_step": 2, "learning_rate": pytest.approx(5e-4)}]
    run_step(trainer, 5)
    run_step(trainer, 6)  # confirms checkpoint 5: the state after the rollback and one healthy step
    with pytest.raises(GuardStopped, match="rollback limit"):
        run_step(trainer, 7, **{"actor/grad_norm": math.nan})
    written = report(tmp_path)
    assert written["stopped"]["checkpoint"] == str(tmp_path / "global_step_5") and len(written["rollbacks"]) == 1


def test_the_guard_settings_are_read_from_the_composer_group_and_checked(tmp_path: Path) -> None:
    assert composer_trainer(tmp_path, "+composer.guard.enabled=false").guard_hook is None
    hook = composer_trainer(tmp_path, "+composer.guard.rules.entropy_collapse.action=stop",
                            "+composer.guard.rules.entropy_collapse.floor=0.5").guard_hook
    entropy = next(rule for rule in hook.guard.rules if rule.rule.name == "entropy_collapse")
    assert entropy.action == "stop" and entropy.params["floor"] == 0.5
    with pytest.raises(ConfigError, match="which no plugin registered"):
        composer_trainer(tmp_path, "+composer.guard.rules.reward_colapse.action=stop")
    with pytest.raises(ConfigError, match="action"):
        composer_trainer(tmp_path, "+composer.guard.rules.non_finite.action=explode")
    with pytest.raises(ConfigError, match="has no setting"):
        composer_trainer(tmp_path, "+composer.guard.rules.non_finite.patience=3")
    with pytest.raises(ConfigError, match="trainer.save_freq"):
        composer_trainer(tmp_path, "+composer.guard.snapshot_every=2")


# ---------------------------------------------------------------- the launcher's exit code

def test_a_guard_stop_from_verls_task_runner_exits_with_the_guard_code(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from ray.exceptions import RayTaskError

    stop = GuardStopped("the training guard stopped the run at step 5")
    carried = RayTaskError("TaskRunnerV1.run", "Traceback ...", stop).as_instanceof_cause()
    assert launcher.guard_stop(carried) is stop and launcher.guard_stop(RuntimeError("boom")) is None

    def verl_main(config: Any) -> None:
        raise carried

    monkeypatch.setattr(launcher.main_ppo.main, "__wrapped__", verl_main)
    with pytest.raises(SystemExit) as exited:
        launcher.run(None)
    assert exited.value.code == GUARD_EXIT_CODE
    assert "composer-core: the training guard stopped the run at step 5" in capsys.readouterr().err

    def failing(config: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(launcher.main_ppo.main, "__wrapped__", failing)
    with pytest.raises(RuntimeError, match="boom"):
        launcher.run(None)
