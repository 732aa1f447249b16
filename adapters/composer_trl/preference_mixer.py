"""Preference pairs mixed into GRPO training: the data side of channel 3 (trace-replay DPO).

Channel 3 is composer-core's own research channel, NOT part of Cursor's Composer recipe. `PreferenceMixer`
validates and tokenises a preference data set in TRL's format (`prompt` / `chosen` / `rejected`, either lists of
chat messages or plain strings) once, then hands out right-padded batches of pairs in a seeded cycle that
reshuffles every epoch. `preference_batch` scores such a batch under the policy (with gradient) and under the
reference (without) and returns the `composer_core.preference.PreferenceBatch` that
`ComposerLoss(...)(preference=...)` takes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate.utils import extract_model_from_parallel, is_peft_model
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import use_adapter

from composer_core.distill import token_log_probs
from composer_core.errors import ComposerError, ConfigError
from composer_core.preference import PreferenceBatch
from composer_trl.cycle import SeededCycle

COLUMNS = ("prompt", "chosen", "rejected")
COMPLETIONS = ("chosen", "rejected")
EXPECTED_FORMAT = ("expected TRL's preference format: 'prompt', 'chosen' and 'rejected' all non-empty lists of chat "
                   "messages ({'role': ..., 'content': ...}; chosen and rejected hold assistant messages only), or "
                   "all plain strings")
Kind = Literal["conversational", "text"]


class PreferenceDataError(ComposerError, ValueError):
    """A preference data set is not in the expected format; the message names the column or row."""


@dataclass(frozen=True)
class TokenizedPair:
    """One pair as token ids: the prompt both sides share and each side's completion after it."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass(frozen=True)
class PreferenceTokens:
    """A batch of P pairs as 2P right-padded rows, the P chosen rows first, then the P rejected rows.

    All three tensors are (2P, length) long; completion_mask is 1 on the completion tokens (the ones scored).
    indices are the data set rows of the P pairs, in batch order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    indices: tuple[int, ...]

    @property
    def num_pairs(self) -> int:
        return len(self.indices)


class PreferenceMixer:
    """Cycles through a preference data set in batches of `batch_size` pairs (channel 3; composer-core's own
    research channel, not Cursor's recipe).

    Every row is validated and tokenised here, so a bad data set fails before training starts. Conversational
    rows are rendered with the tokenizer's chat template: the prompt with `add_generation_prompt=True`, the
    completion being the tokens of prompt + chosen (or rejected) after the prompt; where the template renders
    the prompt alone differently, the completion starts where the two renderings diverge (TRL's DPOTrainer does
    the same, and a warning says how many rows it concerns). Plain-text rows are tokenised as `prompt + chosen`
    with the eos token appended when missing, as TRL does. `max_length` truncates every sequence at its end;
    pairs whose prompt alone fills it are dropped with a warning. The order is a fresh permutation every epoch,
    drawn from a generator seeded with `seed` (the data set order when `shuffle` is False); a batch that
    crosses an epoch boundary takes the rest from the next epoch, so every batch holds `batch_size` pairs.
    """

    def __init__(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, *, batch_size: int,
                 max_length: int | None = None, seed: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 pairs, got {batch_size}")
        if max_length is not None and max_length < 2:
            raise ConfigError(f"max_length must be >= 2 tokens (a prompt token and a completion token), got "
                              f"{max_length}")
        if tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer has no pad token: set tokenizer.pad_token (often to the eos token)")
        self.pairs, self.dataset_indices = tokenize_dataset(dataset, tokenizer, max_length)
        self.batch_size = batch_size
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.cycle = SeededCycle(len(self.pairs), seed=seed, shuffle=shuffle)

    def __len__(self) -> int:
        return len(self.pairs)

    def next_batch(self, device: torch.device | str | None = None) -> PreferenceTokens:
        """The next `batch_size` pairs of the cycle, collated on `device`."""
        picked = self.cycle.take(self.batch_size)
        return collate([self.pairs[i] for i in picked], self.pad_token_id,
                       tuple(self.dataset_indices[i] for i in picked), device)

    def state_dict(self) -> dict[str, Any]:
        """Where the cycle stands: a resumed run draws the pairs it would have."""
        return self.cycle.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycle.load_state_dict(state, "preference pairs", "data.preference_pairs file")


def tokenize_dataset(dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                     max_length: int | None = None) -> tuple[list[TokenizedPair], list[int]]:
    """Validate and tokenise every row; returns the kept pairs and their data set row indices."""
    missing = [name for name in COLUMNS if name not in dataset.column_names]
    if missing:
        raise PreferenceDataError(f"the preference data set has no {', '.join(map(repr, missing))} column "
                                  f"(columns: {dataset.column_names}); {EXPECTED_FORMAT}")
    if len(dataset) == 0:
        raise PreferenceDataError("the preference data set is empty: it needs at least one prompt / chosen / "
                                  "rejected row")
    pairs: list[TokenizedPair] = []
    indices: list[int] = []
    diverged = dropped = 0
    for index, row in enumerate(dataset.select_columns(list(COLUMNS))):
        pair, prompt_diverged = tokenize_row(tokenizer, row, index)
        diverged += prompt_diverged
        if max_length is not None:
            pair = truncate(pair, max_length)
        if pair is None:
            dropped += 1
            continue
        pairs.append(pair)
        indices.append(index)
    if diverged:
        warnings.warn(f"{diverged} of {len(dataset)} preference rows: the tokenised prompt is not a prefix of the "
                      "tokenised prompt + completion (the chat template renders the prompt alone differently, or "
                      "tokens merge across the boundary); their completions start where the two diverge",
                      UserWarning, stacklevel=3)
    if dropped:
        if not pairs:
            raise PreferenceDataError(f"every prompt of the preference data set fills max_length={max_length}: "
                                      "no completion token is left to train on; raise max_length")
        warnings.warn(f"dropped {dropped} of {len(dataset)} preference rows whose prompt alone fills "
                      f"max_length={max_length}", UserWarning, stacklevel=3)
    return pairs, indices


def row_kind(row: Mapping[str, Any], index: int) -> Kind:
    """Whether a row is conversational or plain text; a PreferenceDataError naming the row if it is neither."""
    if all(isinstance(row[name], str) for name in COLUMNS):
        for name in COMPLETIONS:
            if not row[name]:
                raise PreferenceDataError(f"row {index}: {name!r} is an empty string; {EXPECTED_FORMAT}")
        return "text"
    for name in COLUMNS:
        value = row[name]
        if not isinstance(value, list) or not value:
            what = "an empty list" if isinstance(value, list) else f"a {type(value).__name__}"
            raise PreferenceDataError(f"row {index}: {name!r} is {what}, not a non-empty list of chat messages; "
                                      f"{EXPECTED_FORMAT}")
        for position, message in enumerate(value):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise PreferenceDataError(f"row {index}: {name}[{position}] is not a chat message with a 'role'; "
                                          f"{EXPECTED_FORMAT}")
            if name in COMPLETIONS and message["role"] != "assistant":
                raise PreferenceDataError(f"row {index}: {name}[{position}] has role {message['role']!r}; only "
                                          "assistant messages are trained on, move the others into the prompt")
    return "conversational"


def tokenize_row(tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any],
                 index: int) -> tuple[TokenizedPair, bool]:
    """The row as token ids, and whether its prompt rendering diverged from the full one (see PreferenceMixer)."""
    if row_kind(row, index) == "conversational":
        prompt = chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)
        full = [chat_ids(tokenizer, row["prompt"] + row[name]) for name in COMPLETIONS]
    else:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = [tokenizer(row["prompt"] + with_eos(row[name], tokenizer.eos_token))["input_ids"]
                for name in COMPLETIONS]
    shared = min(common_prefix_length(prompt, ids) for ids in full)
    pair = TokenizedPair(prompt[:shared], full[0][shared:], full[1][shared:])
    if not pair.prompt:
        raise PreferenceDataError(f"row {index}: the prompt tokenises to nothing shared with its completions, so "
                                  "the first completion token has no context to be scored in")
    for name in COMPLETIONS:
        if not getattr(pair, name):
            raise PreferenceDataError(f"row {index}: the {name} completion tokenises to no token")
    return pair, shared < len(prompt)


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
             add_generation_prompt: bool = False) -> list[int]:
    """The token ids of `messages` rendered with the tokenizer's chat template."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                            return_dict=True)
    return list(encoded["input_ids"])


def with_eos(text: str, eos_token: str | None) -> str:
    """`text` ending with the eos token (plain-text completions must teach the model to stop)."""
    return text if eos_token is None or text.endswith(eos_token) else text + eos_token


def common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    """How many leading tokens the two sequences share."""
    length = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        length += 1
    return length


def truncate(pair: TokenizedPair, max_length: int) -> TokenizedPair | None:
    """The pair cut to `max_length` tokens per sequence at the end; None when the prompt alone fills it."""
    room = max_length - len(pair.prompt)
    if room < 1:
        return None
    return TokenizedPair(pair.prompt, pair.chosen[:room], pair.rejected[:room])


def collate(pairs: Sequence[TokenizedPair], pad_token_id: int, indices: tuple[int, ...],
            device: torch.device | str | None = None) -> PreferenceTokens:
    """Right-padded (2P, length) tensors: the P chosen rows, then the P rejected rows; `indices` are the pairs'
    data set rows."""
    rows = [(pair.prompt, pair.chosen) for pair in pairs] + [(pair.prompt, pair.rejected) for pair in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(rows):
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, :end] = 1
        completion_mask[row, len(prompt):end] = 1
    return PreferenceTokens(input_ids.to(device), attention_mask.to(device), completion_mask.to(device), indices)


def sequence_log_probs(model: torch.nn.Module, tokens: PreferenceTokens, temperature: float = 1.0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens, (P,) each for chosen and rejected, with gradient, and the
    completion lengths (float, same dtype). Logits are divided by `temperature` before the softmax; only the
    positions from the earliest completion on reach the LM head (`logits_to_keep`)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    mask = tokens.completion_mask.bool()
    start = int(mask.any(0).nonzero()[0])  # >= 1: every row has a prompt token
    logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                   logits_to_keep=tokens.input_ids.size(1) - start + 1, use_cache=False).logits
    per_token = token_log_probs(logits[:, :-1].float() / temperature, tokens.input_ids[:, start:])
    scored = mask[:, start:]
    summed = torch.where(scored, per_token, 0.0).sum(-1)
    lengths = scored.sum(-1).to(summed.dtype)
    chosen, rejected = summed.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    return chosen, rejected, chosen_lengths, rejected_lengths


def reference_log_probs(policy_model: torch.nn.Module, tokens: PreferenceTokens,
                        ref_model: torch.nn.Module | None = None, temperature: float = 1.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs (chosen, rejected) under the reference, without gradient: `ref_model` when
    given (a frozen copy of the initial policy, best in eval mode), else for a PEFT policy the adapter named
    "ref" when there is one (TRL's GRPOTrainer makes it when re-training an existing adapter), else the base
    model with the adapters disabled."""
    with torch.no_grad():
        if ref_model is not None:
            chosen, rejected, _, _ = sequence_log_probs(ref_model, tokens, temperature)
        else:
            with peft_reference(policy_model):
                chosen, rejected, _, _ = sequence_log_probs(policy_model, tokens, temperature)
    return chosen, rejected


def peft_reference(model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """The context in which a PEFT policy computes as its reference; a ConfigError for any other model."""
    if not is_peft_model(model):
        raise ConfigError(f"the preference channel needs a reference model: {type(model).__name__} is not a PEFT "
                          "model, so disabling its adapters cannot recover the initial policy; pass ref_model (a "
                          "frozen copy of the initial policy) or train a PEFT adapter")
    unwrapped = extract_model_from_parallel(model)
    return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)


def preference_batch(model: torch.nn.Module, tokens: PreferenceTokens, ref_model: torch.nn.Module | None = None,
                     temperature: float = 1.0) -> PreferenceBatch:
    """Policy (with gradient) and reference (without) sequence log-probs of a batch, with the completion lengths,
    as the PreferenceBatch that ComposerLoss's preference channel takes."""
    chosen, rejected, chosen_lengths, rejected_lengths = sequence_log_probs(model, tokens, temperature)
    ref_chosen, ref_rejected = reference_log_probs(model, tokens, ref_model, temperature)
    return PreferenceBatch(chosen, rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths)
