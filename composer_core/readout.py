"""Device scalars read into Python together: one `.tolist()` instead of one `.item()` per value.

Each `.item()` is a device sync (on a GPU the host waits for every queued kernel); a loss that reports ten
metrics and checks its inputs would otherwise wait ten times per micro-batch.
"""

from __future__ import annotations

import functools

import torch


class Readout:
    """Named 0-d tensors collected during a computation and read at the end."""

    def __init__(self) -> None:
        self._by_dtype: dict[torch.dtype, dict[str, torch.Tensor]] = {}

    def add(self, **scalars: torch.Tensor) -> None:
        """0-d tensors, read under their keyword."""
        for name, value in scalars.items():
            self._by_dtype.setdefault(value.dtype, {})[name] = value.detach()

    def read(self) -> dict[str, float]:
        """Every value as a Python float, with one transfer: the values are stacked in their promoted dtype, or in
        float64 where integers meet floats (float32 would round counts above 2**24; float64 holds both exactly)."""
        if not self._by_dtype:
            return {}
        dtype = functools.reduce(torch.promote_types, self._by_dtype)
        if dtype.is_floating_point and any(not group.is_floating_point for group in self._by_dtype):
            dtype = torch.float64
        vectors = [torch.stack(list(group.values())).to(dtype) for group in self._by_dtype.values()]
        names = [name for group in self._by_dtype.values() for name in group]
        vector = vectors[0] if len(vectors) == 1 else torch.cat(vectors)
        return dict(zip(names, map(float, vector.tolist()), strict=True))
