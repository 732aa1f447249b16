"""verl-shaped inputs shared by the VeRL parity and adapter tests: padded policy batches, real ActorConfigs,
verl's actor loss on a packed TensorDict, and grouped rollouts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from composer_core.objectives import Normaliser

verl_actor = pytest.importorskip("verl.workers.config.actor")

DTYPE = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-10}
# verl metric -> our per-token stat (both masked means over the response tokens)
METRIC_NAMES = {"actor/pg_clipfrac": "clipfrac", "actor/ppo_kl": "approx_kl",
                "actor/pg_clipfrac_lower": "clipfrac_lower"}
PROMPT_LENGTH = 2  # prompt positions before the response in the flattened model output of `verl_actor_loss`


@dataclass(frozen=True)
class Batch:
    """Padded (rows, length) policy inputs as verl's actor hands them to a loss; mask is bool."""

    log_prob: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor

    def split(self, parts: int) -> list[Batch]:
        """Row chunks (micro-batches or data-parallel shards)."""
        pieces = zip(*(t.tensor_split(parts) for t in dataclasses.astuple(self)), strict=True)
        return [Batch(*piece) for piece in pieces]


@dataclass(frozen=True)
class Outcome:
    """A loss value, its gradient with respect to log_prob, and the reported metrics."""

    loss: torch.Tensor
    grad: torch.Tensor
    metrics: dict[str, float]


@dataclass(frozen=True)
class GlobalInfo:
    """verl's `global_batch_info`, and the Normaliser that must aggregate exactly like it."""

    dp_size: int = 1
    batch_num_tokens: int | None = None
    global_batch_size: int | None = None
    loss_scale_factor: int | None = None

    def verl(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)

    def normaliser(self) -> Normaliser:
        return Normaliser(num_tokens=self.batch_num_tokens, num_sequences=self.global_batch_size,
                          max_length=self.loss_scale_factor, scale=self.dp_size)


def make_batch(seed: int, rows: int = 8, length: int = 12, spread: float = 0.7) -> Batch:
    """Ragged random batch: row lengths in 1..length (row 0 full), token advantages of both signs, and
    log-ratios ~ N(0, spread) so both clip sides and the dual clip (ratio > c) are reached."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=gen)
    lengths[0] = length
    mask = torch.arange(length) < lengths.unsqueeze(-1)
    old = -3 * torch.rand(rows, length, generator=gen, dtype=DTYPE) - 0.05
    log_prob = old + spread * torch.randn(rows, length, generator=gen, dtype=DTYPE)
    advantages = torch.where(mask, 1.5 * torch.randn(rows, length, generator=gen, dtype=DTYPE), 0.0)
    return Batch(log_prob, old, advantages, mask)


def actor_config(loss_mode: str, aggregation: str = "token-mean", **overrides: Any) -> Any:
    """A real verl ActorConfig as verl's CPU tests build one (rollout_n and a micro-batch size are required)."""
    settings = {"strategy": "fsdp", "rollout_n": 4, "ppo_micro_batch_size_per_gpu": 1, "loss_agg_mode": aggregation,
                "policy_loss": verl_actor.PolicyLossConfig(loss_mode=loss_mode), **overrides}
    return verl_actor.ActorConfig(**settings)


def outcome(loss: torch.Tensor, leaf: torch.Tensor, metrics: dict[str, float]) -> Outcome:
    (grad,) = torch.autograd.grad(loss, leaf)
    return Outcome(loss.detach(), grad, metrics)


def assert_parity(ours: Outcome, theirs: Outcome) -> None:
    """Same loss, same (non-trivial) gradient, and every verl metric that has a counterpart in our stats."""
    assert bool(theirs.grad.abs().sum() > 0), "degenerate inputs: verl's gradient is zero everywhere"
    torch.testing.assert_close(ours.loss, theirs.loss, **TOL)
    torch.testing.assert_close(ours.grad, theirs.grad, **TOL)
    for verl_name, our_name in METRIC_NAMES.items():
        if our_name in ours.metrics:
            assert ours.metrics[our_name] == pytest.approx(theirs.metrics[verl_name], rel=1e-6, abs=1e-10), our_name


def verl_actor_loss(batch: Batch, config: Any, info: GlobalInfo, ref_log_prob: torch.Tensor | None = None
                    ) -> Outcome:
    """verl's actor loss (`workers.utils.losses.ppo_loss`): policy loss plus KL loss, global counts from the data.

    The model output is flattened as verl's no-padding engines produce it: per row, the prompt then the response
    positions, the log-prob of response token j sitting at position PROMPT_LENGTH - 1 + j of that row.
    """
    losses = pytest.importorskip("verl.workers.utils.losses")
    tensordict_utils = pytest.importorskip("verl.utils.tensordict_utils")
    tensor_dict = pytest.importorskip("tensordict")
    rows, _ = batch.mask.shape
    log_prob = batch.log_prob.clone().requires_grad_()
    lengths = batch.mask.sum(-1).tolist()
    flat = torch.cat([torch.cat([log_prob.new_zeros(PROMPT_LENGTH - 1), log_prob[i, :n], log_prob.new_zeros(1)])
                      for i, n in enumerate(lengths)])
    fields = {"prompts": torch.zeros(rows, PROMPT_LENGTH, dtype=torch.long),
              "responses": torch.zeros(batch.mask.shape, dtype=torch.long),
              "attention_mask": torch.cat([torch.ones(rows, PROMPT_LENGTH, dtype=torch.long), batch.mask.long()], 1),
              "response_mask": batch.mask, "old_log_probs": batch.old_log_prob, "advantages": batch.advantages}
    if ref_log_prob is not None:
        fields["ref_log_prob"] = ref_log_prob
    data = tensor_dict.TensorDict(fields, batch_size=[rows])
    tensordict_utils.assign_non_tensor(data, dp_size=info.dp_size, batch_num_tokens=info.batch_num_tokens,
                                       global_batch_size=info.global_batch_size)
    loss, metrics = losses.ppo_loss(config, {"log_probs": flat}, data)
    return outcome(loss, log_prob, {name: metrics[name].aggregate() for name in METRIC_NAMES if name in metrics})


@dataclass(frozen=True)
class Rollouts:
    """Outcome scores of groups of different sizes, in shuffled order; mask rows may have inner holes
    (multi-turn observation spans); uids are a numpy object array of strings, as verl's `uid` column."""

    scores: torch.Tensor
    mask: torch.Tensor
    uids: np.ndarray

    def token_rewards(self) -> torch.Tensor:
        """verl's layout: the outcome reward on the last valid response token."""
        last = self.mask.long().cumsum(-1).argmax(-1)
        rewards = torch.zeros(self.mask.shape, dtype=DTYPE)
        rewards[torch.arange(len(last)), last] = self.scores
        return rewards


def make_rollouts(seed: int, group_sizes: tuple[int, ...], length: int = 10) -> Rollouts:
    """Random rewards per group; the first group has identical rewards (zero std)."""
    gen = torch.Generator().manual_seed(seed)
    uids = np.array([f"prompt-{g}" for g, size in enumerate(group_sizes) for _ in range(size)], dtype=object)
    scores = torch.randn(len(uids), generator=gen, dtype=DTYPE) + torch.randint(0, 2, (len(uids),), generator=gen)
    scores[: group_sizes[0]] = 0.75
    order = torch.randperm(len(uids), generator=gen)
    lengths = torch.randint(1, length + 1, (len(uids),), generator=gen)
    mask = torch.arange(length) < lengths.unsqueeze(-1)
    mask[lengths >= 6, 2:4] = False  # an observation span inside longer responses
    return Rollouts(scores[order], mask[order], uids[order.numpy()])


def nested(rows: list[torch.Tensor]) -> torch.Tensor:
    """A jagged nested tensor, the layout VeRL's V1 micro-batches carry per sample."""
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


@dataclass(frozen=True)
class PackedBatch:
    """A policy batch as VeRL's engine hands it to the loss: nested per-sample fields in a TensorDict, and the
    packed (total_nnz,) log-prob output, prompt then response positions per sample (prompt lengths vary)."""

    data: Any
    log_prob: torch.Tensor  # (rows, length) leaf the packed output is built from
    packed_log_prob: torch.Tensor  # (1 nested row per sample) as the engine's model_output["log_probs"]
    prompt_lengths: list[int]


def packed_batch(batch: Batch, info: GlobalInfo, prompt_lengths: list[int], **response_fields: torch.Tensor
                 ) -> PackedBatch:
    """Nested prompts/responses/input_ids and response-aligned fields (old_log_probs, advantages and any extra
    (rows, length, ...) tensor), as the V1 trainer stores them; batch.mask must be a prefix per row."""
    tensordict_utils = pytest.importorskip("verl.utils.tensordict_utils")
    lengths = batch.mask.sum(-1).tolist()
    log_prob = batch.log_prob.clone().requires_grad_()
    prompts = [torch.arange(1, p + 1) for p in prompt_lengths]
    responses = [torch.arange(100, 100 + n) for n in lengths]
    per_response = {"response_mask": batch.mask.long(), "old_log_probs": batch.old_log_prob,
                    "advantages": batch.advantages, **response_fields}
    fields = {name: nested([value[i, :n] for i, n in enumerate(lengths)]) for name, value in per_response.items()}
    fields.update(prompts=nested(prompts), responses=nested(responses),
                  input_ids=nested([torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]))
    data = tensordict_utils.get_tensordict(tensor_dict=fields, non_tensor_dict={
        "dp_size": info.dp_size, "batch_num_tokens": info.batch_num_tokens,
        "global_batch_size": info.global_batch_size})
    packed = nested([torch.cat([log_prob.new_zeros(p - 1), log_prob[i, :n], log_prob.new_zeros(1)])
                     for i, (p, n) in enumerate(zip(prompt_lengths, lengths, strict=True))])
    return PackedBatch(data, log_prob, packed, prompt_lengths)
