"""Tensor-batch contracts: shape, dtype, mask and finiteness checks at the loss boundary.

Values outside a mask are never read by the losses, so they are never checked either: padding may hold
anything. Inside the mask, NaN or Inf is an error that names the tensor and the first offending position.
"""

from __future__ import annotations

import math

import torch

from composer_core.errors import BatchError, NonFiniteError


def as_bool_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Return `mask` as a bool tensor, refusing anything but bool or 0/1 values."""
    if not isinstance(mask, torch.Tensor):
        raise BatchError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        bool_mask = mask.bool()
        if not torch.equal(mask, as_numeric(bool_mask, mask.dtype)):  # one fused compare, not eq/eq/or/all
            raise BatchError(f"{name} must hold only 0 and 1 (or be bool); found other values such as "
                             f"{mask[(mask != 0) & (mask != 1)].flatten()[0].item()!r}")
        return bool_mask
    raise BatchError(f"{name} must be bool or a 0/1 numeric tensor, got dtype {mask.dtype}")


def as_numeric(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as 0/1 values of `dtype`, through a uint8 view (converting bool directly is several times
    slower on CPU)."""
    return mask.view(torch.uint8).to(dtype)


def check_float(name: str, tensor: torch.Tensor) -> None:
    """Refuse a non-tensor or a non-floating tensor where log-probs, logits or advantages are expected."""
    if not isinstance(tensor, torch.Tensor):
        raise BatchError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise BatchError(f"{name} must be a floating-point tensor (log-probs, logits or advantages), got dtype "
                         f"{tensor.dtype}; convert it with .float()")


def check_same_shape(expected: tuple[int, ...], reference_name: str, **tensors: torch.Tensor) -> None:
    """Every tensor must have exactly the shape of the reference tensor."""
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected):
            raise BatchError(f"{name} has shape {tuple(tensor.shape)} but {reference_name} has shape "
                             f"{tuple(expected)}; both must be (batch, response_length)")


def check_finite(name: str, tensor: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Refuse NaN or Inf inside the mask (the whole tensor when no mask is given)."""
    if is_finite_sum(finite_probe(tensor)):
        return  # every element is finite: nothing to locate
    bad = ~torch.isfinite(tensor.detach())
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        position = tuple(int(i) for i in bad.nonzero()[0].tolist())
        value = tensor.detach()[position].item()
        raise NonFiniteError(f"{name} holds a non-finite value ({value}) at position {position} inside the mask; "
                         "check the forward pass that produced it (overflow in bf16, log of zero, a bad reward)")


def finite_probe(values: torch.Tensor) -> torch.Tensor:
    """The sum of `values` (in float32 at least): finite exactly when every element is, unless it overflows.

    One reduction, where `isfinite(...).all()` takes four passes; a non-finite probe only says "look closer"
    (an overflowing sum of finite values is possible), so callers then run the exact, locating check.
    """
    wide = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else None
    return values.detach().sum(dtype=wide)


def is_finite_sum(probe: torch.Tensor | float) -> bool:
    """Whether a probe from `finite_probe` (a tensor, or a value already read) is finite."""
    return math.isfinite(probe.item() if isinstance(probe, torch.Tensor) else probe)


def check_token_batch(mask_name: str, mask: torch.Tensor, *, allow_empty_rows: bool = False,
                      **tensors: torch.Tensor | None) -> torch.Tensor:
    """Validate per-token tensors of shape (batch, length) against their mask; return the mask as bool.

    Tensors passed as None are skipped (optional inputs). A row with no token in the mask is an error unless
    `allow_empty_rows`: a completion that contributes nothing is almost always a padding or masking bug.
    """
    bool_mask = as_bool_mask(mask, mask_name)
    if bool_mask.dim() != 2:
        raise BatchError(f"{mask_name} must be 2-D (batch, response_length), got shape {tuple(bool_mask.shape)}")
    present = {name: t for name, t in tensors.items() if t is not None}
    for name, tensor in present.items():
        check_float(name, tensor)
    check_same_shape(tuple(bool_mask.shape), mask_name, **present)
    for name, tensor in present.items():
        check_finite(name, tensor, bool_mask)
    if not allow_empty_rows:
        empty = (~bool_mask.any(dim=-1)).nonzero().flatten()
        if empty.numel():
            raise BatchError(f"{mask_name} has rows with no tokens: {empty.tolist()[:8]}; a completion with an "
                             "empty mask cannot be trained. Drop those rows, or pass allow_empty_rows=True if "
                             "they are deliberate padding")
    return bool_mask
