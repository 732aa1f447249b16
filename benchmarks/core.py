"""What a benchmark case is, one forward+backward step, and the numerical agreement check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

Impl = Literal["ours", "theirs"]
Kind = Literal["policy", "divergence", "hidden"]


@dataclass(frozen=True)
class CaseSpec:
    """A picklable description of one comparison; `suite.prepare` turns it into tensors and callables.

    kind selects the factory, shape its sizes, options its settings (objective, support, alpha...);
    baseline names the other side ("verl vanilla", "TRL SDPO full"...).
    """

    name: str
    kind: Kind
    shape: tuple[int, ...]
    baseline: str
    options: dict[str, Any] = field(default_factory=dict)
    repeats: int = 10

    def with_shape(self, shape: tuple[int, ...]) -> CaseSpec:
        """The same case at other sizes (a tiny warm-up, the smoke test)."""
        return replace(self, shape=shape)


@dataclass(frozen=True)
class Pair:
    """Both implementations over the same inputs: each callable returns a scalar loss or a per-token tensor.

    leaves are the tensors that receive gradients; tolerance bounds max |ours - theirs| / max |theirs|.
    """

    ours: Callable[[], torch.Tensor]
    theirs: Callable[[], torch.Tensor]
    leaves: tuple[torch.Tensor, ...]
    shape_label: str
    tolerance: float

    def pick(self, impl: Impl) -> Callable[[], torch.Tensor]:
        return self.ours if impl == "ours" else self.theirs


class DisagreementError(AssertionError):
    """Ours and theirs computed different numbers: timing them side by side would be meaningless."""


def step(loss_fn: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One forward+backward; a per-token output is reduced by its mean (the same reduction on both sides)."""
    for leaf in leaves:
        leaf.grad = None
    output = loss_fn()
    (output if output.dim() == 0 else output.mean()).backward()
    return output.detach()


def _relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = theirs.abs().max().clamp(min=torch.finfo(theirs.dtype).tiny)
    return float((ours.double() - theirs.double()).abs().max() / scale)


def check_agreement(pair: Pair, case: str) -> float:
    """Run both sides once; raise DisagreementError unless outputs and gradients agree.

    Returns the largest relative difference seen (outputs and every leaf's gradient).
    """
    results = {}
    for impl in ("ours", "theirs"):
        output = step(pair.pick(impl), pair.leaves)
        results[impl] = [output, *(leaf.grad.detach().clone() for leaf in pair.leaves)]
    worst = 0.0
    for index, (ours, theirs) in enumerate(zip(results["ours"], results["theirs"], strict=True)):
        what = "output" if index == 0 else f"gradient of input {index - 1}"
        if ours.shape != theirs.shape:
            raise DisagreementError(f"{case}: {what} has shape {tuple(ours.shape)} (ours) vs {tuple(theirs.shape)}")
        difference = _relative_difference(ours, theirs)
        if not difference <= pair.tolerance:
            raise DisagreementError(f"{case}: {what} differs by {difference:.2e} (relative to its max), "
                                    f"above the tolerance {pair.tolerance:.0e}")
        worst = max(worst, difference)
    for leaf in pair.leaves:
        leaf.grad = None
    return worst
