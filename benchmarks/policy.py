"""Channel 1 against verl: our per-token surrogates + `aggregate` (or `ComposerLoss`) vs verl's policy losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.workers.config.actor import ActorConfig

from benchmarks.core import CaseSpec, Pair
from composer_core import ComposerConfig, ComposerLoss, Normaliser, PolicyInputs, registries
from composer_core.objectives import PolicyBatch, aggregate

TOLERANCE = 1e-5


@dataclass(frozen=True)
class Variant:
    """One objective on both sides: our registered name and settings, verl's loss mode and ActorConfig fields."""

    ours: str
    verl: str
    aggregation: str
    ours_params: dict[str, Any] = field(default_factory=dict)
    verl_config: dict[str, Any] = field(default_factory=dict)


GSPO_CLIP = {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4}
CISPO_CLIP = {"clip_ratio_low": 0.2, "clip_ratio_high": 4.0}
SAPO_TAUS = {"tau_pos": 1.0, "tau_neg": 1.05}
VARIANTS = {
    "ppo": Variant("ppo", "vanilla", "token-mean", {"dual_clip_c": 3.0}, {"clip_ratio_c": 3.0}),
    "gspo": Variant("gspo", "gspo", "seq-mean-token-mean", GSPO_CLIP, GSPO_CLIP),
    "cispo": Variant("cispo", "cispo", "token-mean", {"lower_clip": True, **CISPO_CLIP}, CISPO_CLIP),
    "sapo": Variant("sapo", "sapo", "seq-mean-token-mean", SAPO_TAUS, SAPO_TAUS),
    "reinforce": Variant("reinforce", "gpg", "token-mean"),
}


@dataclass(frozen=True)
class PolicyTensors:
    """Padded (batch, length) inputs; verl gets the 0/1 float mask it is usually fed, we get a bool mask."""

    log_prob: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    float_mask: torch.Tensor

    @property
    def normaliser(self) -> Normaliser:
        return Normaliser(num_tokens=int(self.mask.sum()), num_sequences=int(self.mask.any(-1).sum()))


def make_tensors(batch: int, length: int, device: torch.device, seed: int = 0) -> PolicyTensors:
    """Right-padded responses of random length, old policy 0.2 nats away, one advantage per sequence."""
    generator = torch.Generator().manual_seed(seed)
    log_prob = -torch.rand(batch, length, generator=generator) * 3 - 0.01
    old_log_prob = log_prob + 0.2 * torch.randn(batch, length, generator=generator)
    advantages = torch.randn(batch, 1, generator=generator).expand(batch, length).contiguous()
    lengths = torch.randint(max(length // 4, 1), length + 1, (batch,), generator=generator)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return PolicyTensors(log_prob.to(device).requires_grad_(), old_log_prob.to(device), advantages.to(device),
                         mask.to(device), mask.float().to(device))


def verl_loss(variant: Variant, tensors: PolicyTensors) -> Callable[[], torch.Tensor]:
    """verl's registered policy loss through its own call contract (keywords, ActorConfig)."""
    norm = tensors.normaliser
    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                         loss_agg_mode=variant.aggregation, **variant.verl_config,
                         global_batch_info={"dp_size": 1, "batch_num_tokens": norm.num_tokens,
                                            "global_batch_size": norm.num_sequences})
    loss_fn = get_policy_loss_fn(variant.verl)
    return lambda: loss_fn(old_log_prob=tensors.old_log_prob, log_prob=tensors.log_prob,
                           advantages=tensors.advantages, response_mask=tensors.float_mask,
                           loss_agg_mode=variant.aggregation, config=config, rollout_is_weights=None)[0]


def per_token_loss(variant: Variant, tensors: PolicyTensors) -> Callable[[], torch.Tensor]:
    """Our surrogate (the registered objective's per-token function) then `aggregate`: no validation."""
    objective = registries().objectives.get(variant.ours)
    params = objective.make_params(variant.ours_params)
    batch = PolicyBatch(tensors.log_prob, tensors.old_log_prob, tensors.advantages, tensors.mask)
    norm = tensors.normaliser
    return lambda: aggregate(objective.per_token(batch, params).loss, tensors.mask, variant.aggregation, norm)


def composer_loss(variant: Variant, tensors: PolicyTensors) -> Callable[[], torch.Tensor]:
    """The full `ComposerLoss` policy path: input validation, metrics (with .item()), finiteness check."""
    config = ComposerConfig.from_mapping({"policy": {"objective": {
        "name": variant.ours, "aggregation": variant.aggregation, "normaliser": "global",
        "params": variant.ours_params}}})
    loss = ComposerLoss(config)
    inputs = PolicyInputs(log_prob=tensors.log_prob, advantages=tensors.advantages, mask=tensors.mask,
                          old_log_prob=tensors.old_log_prob)
    norm = tensors.normaliser
    return lambda: loss(policy=inputs, normaliser=norm).loss


PATHS = {"per_token": per_token_loss, "composer_loss": composer_loss, "verl": verl_loss}


def prepare(spec: CaseSpec, device: torch.device) -> Pair:
    """Tensors and both callables for a policy case; options: objective, path (ours: "per_token" by default, or
    "composer_loss") and against (theirs: "verl" by default, or "per_token" to price `ComposerLoss` itself)."""
    batch, length = spec.shape
    variant = VARIANTS[spec.options["objective"]]
    tensors = make_tensors(batch, length, device)
    ours, theirs = PATHS[spec.options.get("path", "per_token")], PATHS[spec.options.get("against", "verl")]
    return Pair(ours(variant, tensors), theirs(variant, tensors), (tensors.log_prob,), f"{batch}x{length}",
                TOLERANCE)


def cases(batch: int, length: int, repeats: int) -> list[CaseSpec]:
    """Every objective against its verl counterpart, plus PPO through `ComposerLoss`: against verl, and against
    our own objective + `aggregate` on the same inputs (what validation and metrics cost, in one run)."""
    specs = [CaseSpec(name, "policy", (batch, length), f"verl {variant.verl}", {"objective": name}, repeats)
             for name, variant in VARIANTS.items()]
    specs.append(CaseSpec("ppo via ComposerLoss", "policy", (batch, length), "verl vanilla",
                          {"objective": "ppo", "path": "composer_loss"}, repeats))
    specs.append(CaseSpec("ppo via ComposerLoss vs bare", "policy", (batch, length), "ppo per-token + aggregate",
                          {"objective": "ppo", "path": "composer_loss", "against": "per_token"}, repeats))
    return specs
