"""The self-distillation teacher's weights inside a VeRL actor worker: a shadow of the policy's parameters.

Each rank keeps a copy of its own (possibly sharded) parameter tensors. "ema" moves the copy toward the
policy after every update (SDPO's teacher, rate r: teacher <- (1 - r) teacher + r policy), "frozen" keeps the
initial policy (OPSD). The teacher forward swaps the copy in, tensor by tensor, and back out afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from composer_core.errors import ConfigError

SHADOW_TEACHERS = ("ema", "frozen")


def local_tensor(parameter: torch.Tensor) -> torch.Tensor:
    """The storage this rank owns: a DTensor's local shard, or the tensor itself (without autograd)."""
    local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
    return local.detach()


class TeacherShadow:
    """A teacher copy of `parameters` (a list of this rank's parameter tensors, in a fixed order)."""

    def __init__(self, parameters: Sequence[torch.Tensor], kind: str, rate: float) -> None:
        if kind not in SHADOW_TEACHERS:
            raise ConfigError(f"teacher {kind!r} keeps no weight copy; choose one of {SHADOW_TEACHERS}")
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"teacher_rate must be in (0, 1], got {rate}")
        self.kind, self.rate = kind, rate
        self.weights = [local_tensor(p).clone() for p in parameters]

    def _check(self, parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        locals_ = [local_tensor(p) for p in parameters]
        if len(locals_) != len(self.weights) or any(a.shape != b.shape for a, b in zip(locals_, self.weights,
                                                                                          strict=True)):
            raise RuntimeError("the policy's parameters changed shape or number since the teacher copy was made")
        return locals_

    @torch.no_grad()
    def update(self, parameters: Sequence[torch.Tensor]) -> None:
        """After an optimiser step: EMA toward the policy; a frozen teacher stays where it started."""
        if self.kind != "ema":
            return
        for teacher, policy in zip(self.weights, self._check(parameters), strict=True):
            teacher.lerp_(policy.to(teacher.device, teacher.dtype), self.rate)

    @contextmanager
    @torch.no_grad()
    def swapped_in(self, parameters: Sequence[torch.Tensor]) -> Iterator[None]:
        """The policy's parameters hold the teacher's values inside the block, their own values after it.

        The local tensors are looked up again on the way out: an engine that offloads parameters replaces their
        storage during the forward.
        """
        self._swap(self._check(parameters))
        try:
            yield
        finally:
            self._swap(self._check(parameters))

    def _swap(self, locals_: list[torch.Tensor]) -> None:
        for policy, teacher in zip(locals_, self.weights, strict=True):
            held = policy.clone()
            policy.copy_(teacher)
            teacher.copy_(held)

    def save(self, path: Path) -> None:
        """This rank's teacher tensors (a checkpoint holds one file per rank, beside the actor's)."""
        torch.save({"kind": self.kind, "rate": self.rate, "weights": [w.cpu() for w in self.weights]}, path)

    @torch.no_grad()
    def load(self, path: Path) -> None:
        """Resume the teacher saved by `save`; a different model or sharding is refused, not half-loaded."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        weights = saved["weights"]
        if len(weights) != len(self.weights) or any(a.shape != b.shape for a, b in zip(weights, self.weights,
                                                                                        strict=True)):
            raise RuntimeError(f"{path} holds a teacher for another model or sharding ({len(weights)} tensors); "
                               "resume with the same model and data-parallel layout, or delete it to restart "
                               "the teacher from the policy")
        for mine, stored in zip(self.weights, weights, strict=True):
            mine.copy_(stored)

