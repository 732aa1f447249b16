"""Prompt + completion rows and the model outputs the loss reads: logits and log-probs at completion positions."""

from __future__ import annotations

import torch
from torch import nn

from composer_torchtune.sampling import forward


def joined(prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """Left-padded prompts followed by right-padded completions: one row per sample."""
    return torch.cat([prompts, completions], dim=1)


def completion_logits(model: nn.Module, prompts: torch.Tensor, completions: torch.Tensor, pad_id: int
                      ) -> torch.Tensor:
    """Raw logits (batch, completion length, vocab) that predict each completion token."""
    logits = forward(model, joined(prompts, completions), pad_id)
    start = prompts.size(1) - 1
    return logits[:, start:start + completions.size(1)].float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability (batch, length) of each token under `logits` at the sampling temperature (as TRL and
    torchtune score completions)."""
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
