"""Two ways to keep padding out of a per-token computation, behind one interface.

`MultiplyMask` multiplies by a 0/1 copy of the mask: several times faster than a select on CPU (a select on a
bool condition is not vectorised there) and exact when every value is finite, but `0 * NaN` is NaN.
`SelectMask` selects with `torch.where`: exact whatever the padding holds. The policy channel computes with
the first and falls back to the second when a finite probe of its inputs says some value is not finite.
"""

from __future__ import annotations

import torch

from composer_core.contracts import as_numeric
from composer_core.objectives.aggregation import masked_sum


class SelectMask:
    """Padding handled by selection: NaN or Inf outside the mask never reaches a value or a gradient."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def zero_outside(self, values: torch.Tensor) -> torch.Tensor:
        """`values` where the mask is true, zero elsewhere."""
        return torch.where(self.mask, values, torch.zeros((), dtype=values.dtype, device=values.device))

    def sum_inside(self, values: torch.Tensor) -> torch.Tensor:
        """The sum of `values` over the mask."""
        return masked_sum(values, self.mask)

    def tokens_per_row(self) -> torch.Tensor:
        """Masked tokens per row."""
        return self.mask.sum(-1)


class MultiplyMask(SelectMask):
    """Padding handled by multiplication with a 0/1 copy of the mask (one per dtype, made on first use).

    Equal to `SelectMask` when every value is finite; the caller must check that (see `finite_probe`).
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask)
        self._numeric: dict[torch.dtype, torch.Tensor] = {}

    def numeric(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as 0/1 values of `dtype`, in the mask's shape (contiguous)."""
        if dtype not in self._numeric:
            self._numeric[dtype] = as_numeric(self.mask, dtype).contiguous()
        return self._numeric[dtype]

    def zero_outside(self, values: torch.Tensor) -> torch.Tensor:
        return values * self.numeric(values.dtype)

    def sum_inside(self, values: torch.Tensor) -> torch.Tensor:
        """A dot product with the mask (no temporary tensor): the masked sum up to the order of summation."""
        if not values.is_floating_point():
            return super().sum_inside(values)
        return torch.dot(values.reshape(-1), self.numeric(values.dtype).view(-1))

    def tokens_per_row(self) -> torch.Tensor:
        """Counted on the float copy (exact below 2**24 tokens a row): summing bool first converts it to int64."""
        return self.numeric(torch.float32).sum(-1)
