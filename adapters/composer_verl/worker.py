"""VeRL's actor worker with the methods the composer trainer needs: a teacher forward and a teacher update, and
the guard's learning-rate change after a rollback.

The trainer puts this class in place of `ActorRolloutRefWorker` for the actor role (VeRL's trainer exposes
the role -> worker-class mapping for that); everything else is VeRL's worker unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from composer_verl.learning_rate import scale_learning_rate
from composer_verl.teacher_weights import SHADOW_TEACHERS, TeacherShadow


class ComposerActorWorker(ActorRolloutRefWorker):
    """`compute_teacher_topk` runs the actor's forward with the teacher's weights; `update_teacher` moves them."""

    teacher: TeacherShadow | None = None
    resumed_from: str | None = None  # the checkpoint folder VeRL loaded; the teacher resumes from it too

    def _policy_parameters(self) -> list[torch.Tensor]:
        module = getattr(self.actor.engine, "module", None)
        if not isinstance(module, torch.nn.Module):
            raise NotImplementedError(f"the composer teacher copy supports engines with one nn.Module (FSDP); "
                                      f"{type(self.actor.engine).__name__} has none")
        return list(module.parameters())

    def _teacher_file(self, folder: str) -> Path:
        return Path(folder) / f"composer_teacher_rank{self.rank}.pt"

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_teacher(self, kind: str, rate: float) -> None:
        """Copy the current policy as the teacher ("ema" or "frozen"), or resume the saved one; a "live" teacher
        needs no copy."""
        self.teacher = TeacherShadow(self._policy_parameters(), kind, rate) if kind in SHADOW_TEACHERS else None
        if self.teacher is not None and self.resumed_from and self._teacher_file(self.resumed_from).exists():
            self.teacher.load(self._teacher_file(self.resumed_from))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path: str, hdfs_path: str | None = None, global_step: int = 0,
                        max_ckpt_to_keep: int | None = None) -> None:
        """VeRL's actor checkpoint, plus this rank's teacher copy in the same folder."""
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if self.teacher is not None:
            self.teacher.save(self._teacher_file(local_path))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path: str, hdfs_path: str | None = None, del_local_after_load: bool = False
                        ) -> None:
        """VeRL loads the actor before the trainer makes the teacher copy: remember where to resume it from. A load
        after that (the guard's rollback) takes the saved teacher back at once."""
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        self.resumed_from = local_path
        if self.teacher is not None and self._teacher_file(local_path).exists():
            self.teacher.load(self._teacher_file(local_path))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def scale_learning_rate(self, scale: float) -> float:
        """The actor's learning rate set to `scale` x the configured one (composer_verl.learning_rate)."""
        return scale_learning_rate(self.actor.engine.optimizer, self.actor.engine.lr_scheduler, scale)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_teacher(self) -> None:
        if self.teacher is not None:
            self.teacher.update(self._policy_parameters())

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_teacher_topk(self, data: TensorDict) -> Any:
        """The actor's forward on teacher contexts; the composer loss's logits processor returns the top-K."""
        if self.teacher is None:
            output = self.actor.infer_batch(data)
        else:
            with self.teacher.swapped_in(self._policy_parameters()):
                output = self.actor.infer_batch(data)
        return output.cpu() if output is not None else None
