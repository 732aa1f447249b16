"""The suite: which cases run at which shapes, and the dispatch from a CaseSpec to its tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from benchmarks import distillation, policy
from benchmarks.core import CaseSpec, Kind, Pair

POLICY_SHAPES = ((64, 2048), (8, 512))
POLICY_REPEATS = {(64, 2048): 50, (8, 512): 200}
DIVERGENCE_SHAPE = (4, 256, 32768)
DIVERGENCE_REPEATS = 7
HIDDEN_SHAPE = (4, 256, 256, 32768)
HIDDEN_CHUNK = 128
HIDDEN_REPEATS = 5
TINY_SHAPES: dict[Kind, tuple[int, ...]] = {"policy": (2, 8), "divergence": (1, 4, 128), "hidden": (1, 4, 8, 128)}

FACTORIES: dict[Kind, Callable[[CaseSpec, torch.device], Pair]] = {
    "policy": policy.prepare,
    "divergence": distillation.prepare_divergence,
    "hidden": distillation.prepare_hidden,
}


def prepare(spec: CaseSpec, device: torch.device) -> Pair:
    """Build the inputs and both callables of a case on `device`."""
    return FACTORIES[spec.kind](spec, device)


def tiny(spec: CaseSpec) -> CaseSpec:
    """The case at a tiny shape: a warm-up that loads lazy code paths, and the smoke test."""
    return spec.with_shape(TINY_SHAPES[spec.kind])


def default_suite(quick: bool = False) -> list[CaseSpec]:
    """Every case at its benchmark shape, or (quick) at tiny shapes with two repeats to check the harness."""
    specs = [*(case for shape in POLICY_SHAPES for case in policy.cases(*shape, POLICY_REPEATS[shape])),
             *distillation.cases(*DIVERGENCE_SHAPE, DIVERGENCE_REPEATS),
             distillation.hidden_case(*HIDDEN_SHAPE, HIDDEN_CHUNK, HIDDEN_REPEATS)]
    if quick:
        return [replace(tiny(s), repeats=2) for s in specs if s.kind != "policy" or s.shape == POLICY_SHAPES[0]]
    return specs
