"""Sampling completions with one random stream per sample, so a sample does not depend on its batch-mates.

torchtune's `generate` draws the noise of a whole batch from one generator: the same prompt then gets different
completions when the batch is split differently across ranks. Here every sample has its own generator, seeded
from (seed, step, global sample index), so one process with the global batch and N processes with a slice each
sample the same tokens (up to float rounding of the logits). Each new token re-runs the whole sequence (no KV
cache): simple and exact for the short completions of RL on small models; a long-completion job wants a cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchtune import generation

# Weyl-sequence constants: distinct (step, sample) pairs map to distinct generator seeds
STEP_STRIDE = 1_000_003
SAMPLE_STRIDE = 7919


def sample_generators(seed: int, step: int, indices: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded from the run seed, the step and the sample's global index."""
    return [torch.Generator(device).manual_seed(seed + STEP_STRIDE * step + SAMPLE_STRIDE * index)
            for index in indices]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Token rows left-padded to the longest (prompts: the completion then starts at one column for all)."""
    width = max(len(row) for row in rows)
    return torch.tensor([[pad_id] * (width - len(row)) + list(row) for row in rows], dtype=torch.long)


def forward(model: nn.Module, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Logits (batch, length, vocab) of padded token rows: padding is masked out and positions skip it."""
    padding = tokens != pad_id
    mask = generation.get_causal_mask_from_padding_mask(padding)
    positions = generation.get_position_ids_from_padding_mask(padding)
    return model(tokens, input_pos=positions, mask=mask)


def next_tokens(logits: torch.Tensor, temperature: float, top_k: int | None,
                generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row: the exponential-race form of multinomial sampling (as torchtune's `sample`), each row
    with its own noise; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(scaled, min(top_k, scaled.size(-1)), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    noise = torch.stack([torch.empty(probs.size(-1), device=probs.device).exponential_(1, generator=generator)
                         for generator in generators])
    return torch.argmax(probs / noise, dim=-1)


@torch.no_grad()
def generate(model: nn.Module, prompts: torch.Tensor, *, pad_id: int, stop_ids: Sequence[int], max_new_tokens: int,
             temperature: float, top_k: int | None, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Completions (batch, max_new_tokens) of left-padded prompts; each ends at its first stop token (kept) and
    is padded with `pad_id` after it."""
    stops = torch.tensor(list(stop_ids), device=prompts.device)
    tokens = prompts
    done = torch.zeros(prompts.size(0), dtype=torch.bool, device=prompts.device)
    for _ in range(max_new_tokens):
        chosen = next_tokens(forward(model, tokens, pad_id)[:, -1], temperature, top_k, generators)
        chosen = torch.where(done, torch.full_like(chosen, pad_id), chosen)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        done |= torch.isin(chosen, stops)
    return tokens[:, prompts.size(1):]


def completion_mask(completions: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """True on each completion's tokens up to and including its first stop token."""
    stops = torch.isin(completions, torch.tensor(list(stop_ids), device=completions.device))
    after_stop = (stops.cumsum(dim=1) - stops.long()) > 0
    return ~after_stop
