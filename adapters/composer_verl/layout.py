"""Where a response token sits in VeRL's packed (no-padding) model output, and back.

VeRL's engines flatten each sample's prompt and response into one row of `total_nnz` positions; the output
at position t belongs to token t + 1, so response token j of a sample starting at `start` with prompt
length P is scored at `start + P - 1 + j` (VeRL's `no_padding_2_padding` reads it there). The composer
trainer stores teacher tensors per response token, and the logits processor places them at those positions.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict


def prompt_and_response_lengths(data: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample prompt and response lengths, from nested tensors or from the padded attention mask."""
    prompts, responses = data["prompts"], data["responses"]
    if prompts.is_nested:
        return prompts.offsets().diff(), responses.offsets().diff()
    attention_mask = data["attention_mask"]
    width = prompts.shape[1]
    return attention_mask[:, :width].sum(dim=1), attention_mask[:, width:].sum(dim=1)


def response_positions(prompt_lens: torch.Tensor, response_lens: torch.Tensor) -> torch.Tensor:
    """Indices into the packed output of every response token, sample by sample (total_response,).

    Vectorised: it runs on every micro-batch of the update."""
    starts = torch.cumsum(prompt_lens + response_lens, dim=0) - prompt_lens - response_lens
    first = torch.repeat_interleave(starts + prompt_lens - 1, response_lens)  # each token's sample's first slot
    within = torch.arange(int(response_lens.sum()), device=starts.device) - torch.repeat_interleave(
        torch.cumsum(response_lens, dim=0) - response_lens, response_lens)
    return first + within


def response_rows(tensor: torch.Tensor, response_lens: torch.Tensor) -> torch.Tensor:
    """A per-response tensor (nested, or padded (batch, response_length, ...)) as its valid rows, concatenated."""
    if tensor.is_nested:
        return tensor.values()
    return torch.cat([tensor[i, : int(n)] for i, n in enumerate(response_lens)])


def to_packed(tensor: torch.Tensor, data: TensorDict, total: int) -> torch.Tensor:
    """Place a per-response tensor at its packed positions: (total, ...) with zeros at prompt positions."""
    prompt_lens, response_lens = prompt_and_response_lengths(data)
    rows = response_rows(tensor, response_lens)
    packed = rows.new_zeros((total, *rows.shape[1:]))
    packed[response_positions(prompt_lens, response_lens).to(rows.device)] = rows
    return packed
