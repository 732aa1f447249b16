"""Builders of random but well-formed batches for the core's unit tests."""

from __future__ import annotations

import torch


def random_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """A right-padded response mask: every row keeps at least one token."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    return torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)


def random_policy_tensors(batch: int = 6, length: int = 9, seed: int = 0, spread: float = 0.3,
                          dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """log_prob (requires grad), old_log_prob, advantages (batch, length) and a mask; ratios spread around 1."""
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=generator, dtype=dtype) * 3
    log_prob = (old + spread * torch.randn(batch, length, generator=generator, dtype=dtype)).requires_grad_()
    advantages = torch.randn(batch, generator=generator, dtype=dtype).unsqueeze(-1).expand(batch, length)
    return {"log_prob": log_prob, "old_log_prob": old, "advantages": advantages.contiguous(),
            "mask": random_mask(batch, length, generator)}
