"""Parity of composer-core's channel-1 functions with verl 0.9's own implementations.

verl is called through its own entry points: the policy-loss and advantage-estimator registries with a real
`ActorConfig` / `AlgoConfig` (built as verl's CPU tests build them), `kl_penalty`, `compute_rewards`, and the
actor's `ppo_loss`. Ours gets the same float64 inputs; values, gradients and the corresponding metrics must
agree. Where composer-core differs on purpose (documented defaults), the difference itself is tested.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from composer_core import BatchError, ComposerConfig, ComposerLoss, PolicyConfig, PolicyInputs, compute_advantages
from composer_core import registries as composer_registries
from composer_core.objectives import AGGREGATION_MODES, PolicyBatch, aggregate, make_inputs
from composer_core.objectives.aggregation import masked_mean
from composer_core.objectives.kl import kl_estimate, kl_penalised_rewards

pytest.importorskip("verl")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
verl_actor = pytest.importorskip("verl.workers.config.actor")
verl_algorithm = pytest.importorskip("verl.trainer.config")

from verl_batches import (  # noqa: E402 - after the importorskip of verl
    DTYPE,
    METRIC_NAMES,
    TOL,
    Batch,
    GlobalInfo,
    Outcome,
    Rollouts,
    actor_config,
    assert_parity,
    make_batch,
    make_rollouts,
    outcome,
    verl_actor_loss,
)

pytestmark = pytest.mark.backend("verl")
SINGLE_RANK = GlobalInfo()  # one rank, counts taken from the batch



# ---------------------------------------------------------------- inputs and calls




@dataclass(frozen=True)
class Pair:
    """A verl policy loss and our objective that must match it, with equivalent settings.

    aggregations: the modes to test (verl's sapo forces seq-mean-token-mean); must_fire: our clip stats that
    must be strictly between 0 and 1 on the standard batch, so a test cannot pass with clipping never active.
    """

    verl_mode: str
    objective: str
    actor: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    aggregations: tuple[str, ...] = AGGREGATION_MODES
    must_fire: tuple[str, ...] = ()


PAIRS = {
    "ppo-defaults": Pair("vanilla", "ppo", must_fire=("clipfrac", "clipfrac_lower")),
    "ppo-asymmetric": Pair("vanilla", "ppo", {"clip_ratio_low": 0.15, "clip_ratio_high": 0.28, "clip_ratio_c": 2.5},
                           {"clip_ratio_low": 0.15, "clip_ratio_high": 0.28, "dual_clip_c": 2.5},
                           must_fire=("clipfrac", "clipfrac_lower")),
    "gspo": Pair("gspo", "gspo", {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4},
                 {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4}, must_fire=("clipfrac",)),
    "cispo": Pair("cispo", "cispo", {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
                  {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "lower_clip": True}, must_fire=("clipfrac",)),
    "sapo": Pair("sapo", "sapo", {"tau_pos": 1.2, "tau_neg": 1.6}, {"tau_pos": 1.2, "tau_neg": 1.6},
                 aggregations=("seq-mean-token-mean",)),
    "reinforce": Pair("gpg", "reinforce"),
}
PAIR_MODES = [pytest.param(name, mode, id=f"{name}-{mode}")
              for name, pair in PAIRS.items() for mode in pair.aggregations]




def verl_policy_loss(batch: Batch, pair: Pair, aggregation: str, info: GlobalInfo = SINGLE_RANK) -> Outcome:
    """verl's registered policy loss, called with the actor's keyword contract."""
    config = actor_config(pair.verl_mode, aggregation, global_batch_info=info.verl(), **pair.actor)
    log_prob = batch.log_prob.clone().requires_grad_()
    loss_fn = core_algos.get_policy_loss_fn(pair.verl_mode)
    loss, metrics = loss_fn(old_log_prob=batch.old_log_prob, log_prob=log_prob, advantages=batch.advantages,
                            response_mask=batch.mask, loss_agg_mode=aggregation, config=config,
                            rollout_is_weights=None)
    return outcome(loss, log_prob, metrics)


def our_policy_loss(batch: Batch, pair: Pair, aggregation: str, info: GlobalInfo = SINGLE_RANK) -> Outcome:
    """Our objective's per-token loss, aggregated with the Normaliser equivalent to verl's global batch info."""
    objective = composer_registries().objectives.get(pair.objective)
    log_prob = batch.log_prob.clone().requires_grad_()
    policy = PolicyBatch(log_prob, batch.old_log_prob, batch.advantages, batch.mask)
    token = objective.per_token(policy, objective.make_params(pair.params))
    loss = aggregate(token.loss, batch.mask, aggregation, info.normaliser())
    metrics = {name: masked_mean(stat, batch.mask).item() for name, stat in token.stats.items()}
    return outcome(loss, log_prob, metrics)




# ---------------------------------------------------------------- policy losses


@pytest.mark.parametrize(("pair_name", "aggregation"), PAIR_MODES)
def test_policy_loss_matches_verl(pair_name: str, aggregation: str) -> None:
    """Every pair, every aggregation mode it supports: value, gradient, metrics; clipping must be active."""
    pair = PAIRS[pair_name]
    batch = make_batch(seed=1)
    ours = our_policy_loss(batch, pair, aggregation)
    assert_parity(ours, verl_policy_loss(batch, pair, aggregation))
    for stat in pair.must_fire:
        assert 0 < ours.metrics[stat] < 1, f"{stat} = {ours.metrics[stat]}: the inputs do not exercise it"


@pytest.mark.parametrize(("pair_name", "aggregation"), PAIR_MODES)
@pytest.mark.parametrize(("dp_size", "micro_batches"), [(1, 3), (3, 1), (2, 2)])
def test_global_normaliser_matches_verl_and_splits(pair_name: str, aggregation: str, dp_size: int,
                                                   micro_batches: int) -> None:
    """With global counts, each shard's loss equals verl's; the mean over ranks of the sum over micro-batches is
    the whole-batch loss (and gradient), for verl and for us."""
    pair = PAIRS[pair_name]
    batch = make_batch(seed=2, rows=12)
    local = GlobalInfo(loss_scale_factor=16)
    info = GlobalInfo(dp_size, int(batch.mask.sum()), batch.mask.shape[0], loss_scale_factor=16)
    whole = {"verl": verl_policy_loss(batch, pair, aggregation, local),
             "ours": our_policy_loss(batch, pair, aggregation, local)}
    assert_parity(whole["ours"], whole["verl"])
    shards = {"verl": [], "ours": []}
    for chunk in batch.split(dp_size * micro_batches):
        theirs, ours = verl_policy_loss(chunk, pair, aggregation, info), our_policy_loss(chunk, pair, aggregation, info)
        torch.testing.assert_close(ours.loss, theirs.loss, **TOL)
        torch.testing.assert_close(ours.grad, theirs.grad, **TOL)
        shards["verl"].append(theirs)
        shards["ours"].append(ours)
    for side, results in shards.items():
        total = torch.stack([r.loss for r in results]).sum() / dp_size
        torch.testing.assert_close(total, whole[side].loss, **TOL)
        torch.testing.assert_close(torch.cat([r.grad for r in results]) / dp_size, whole[side].grad, **TOL)


@pytest.mark.parametrize("pair_name", list(PAIRS))
def test_extreme_log_ratios_hit_the_same_clamps(pair_name: str) -> None:
    """Log-ratios beyond +-20 (verl clamps them) and a sequence mean beyond 10 (GSPO's clamp)."""
    pair = PAIRS[pair_name]
    batch = make_batch(seed=3)
    shifts = torch.tensor([25.0, -25.0, 21.0, -30.0, 12.0, 0.0, -21.0, 0.5], dtype=DTYPE).unsqueeze(-1)
    jitter = torch.linspace(-2, 2, batch.mask.shape[1], dtype=DTYPE)
    extreme = dataclasses.replace(batch, log_prob=batch.old_log_prob + shifts + jitter)
    log_r = torch.where(extreme.mask, extreme.log_prob - extreme.old_log_prob, 0.0)
    assert bool((log_r.abs() > 20).any()) and bool((log_r.sum(-1) / extreme.mask.sum(-1) > 10).any())
    ours = our_policy_loss(extreme, pair, pair.aggregations[0])
    assert torch.isfinite(ours.loss) and bool(torch.isfinite(ours.grad).all())
    assert_parity(ours, verl_policy_loss(extreme, pair, pair.aggregations[0]))


def test_cispo_default_drops_the_lower_bound() -> None:
    """Documented difference: our CISPO default is TRL's form (no lower clip). With verl's upper bound set to our
    default cap, the two differ only when a ratio falls below 1 - clip_ratio_low, and agree otherwise."""
    default = Pair("cispo", "cispo", {"clip_ratio_low": 0.2, "clip_ratio_high": 4.0}, {})
    batch = make_batch(seed=4)
    log_r = batch.log_prob - batch.old_log_prob
    assert bool((log_r.exp() < 0.8)[batch.mask].any())
    gap = our_policy_loss(batch, default, "token-mean").loss - verl_policy_loss(batch, default, "token-mean").loss
    assert abs(gap.item()) > 1e-3
    above = dataclasses.replace(batch, log_prob=batch.old_log_prob + log_r.clamp(min=np.log(0.8) + 1e-3))
    assert_parity(our_policy_loss(above, default, "token-mean"), verl_policy_loss(above, default, "token-mean"))


# ---------------------------------------------------------------- the composer path and verl's actor loss




@dataclass(frozen=True)
class ComposerCase:
    """A composer config (policy section), the verl actor settings meant to be equivalent, and the global info."""

    policy: dict[str, Any]
    actor: dict[str, Any]
    info: GlobalInfo


COMPOSER_CASES = {
    # grpo's default has no dual clip (TRL's form): verl's vanilla always applies it, so the config sets it
    "grpo": ComposerCase({"objective": {"name": "grpo", "params": {"dual_clip_c": 3.0}}},
                         {"loss_agg_mode": "seq-mean-token-mean"}, GlobalInfo(global_batch_size=8)),
    "dr_grpo": ComposerCase({"objective": {"name": "dr_grpo", "params": {"dual_clip_c": 3.0}}},
                            {"loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 16},
                            GlobalInfo(dp_size=2, global_batch_size=16, loss_scale_factor=16)),
    "overridden": ComposerCase({"objective": {"name": "grpo", "aggregation": "token-mean", "normaliser": "global",
                                              "params": {"clip_ratio_high": 0.28, "dual_clip_c": 2.0}}},
                               {"clip_ratio_high": 0.28, "clip_ratio_c": 2.0},
                               GlobalInfo(dp_size=2, batch_num_tokens=150)),
    "dr_grpo+k3_loss": ComposerCase({"objective": {"name": "dr_grpo", "params": {"dual_clip_c": 3.0}},
                                     "kl": {"coef": 0.1, "estimator": "k3", "clamp": 10, "log_ratio_clamp": 20}},
                                    {"loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 16,
                                     "use_kl_loss": True, "kl_loss_coef": 0.1, "kl_loss_type": "low_var_kl"},
                                    GlobalInfo(dp_size=2, global_batch_size=16, loss_scale_factor=16)),
    "ppo+k1_loss": ComposerCase({"objective": {"name": "ppo"}, "kl": {"coef": 0.05, "estimator": "k1"}},
                                {"use_kl_loss": True, "kl_loss_coef": 0.05, "kl_loss_type": "k1"},
                                GlobalInfo(dp_size=2, batch_num_tokens=150)),
}


@pytest.mark.parametrize("case_name", list(COMPOSER_CASES))
def test_composer_loss_matches_verl_actor_loss(case_name: str) -> None:
    """ComposerLoss built from a config mapping equals verl's actor loss: value, gradient and metrics."""
    case = COMPOSER_CASES[case_name]
    batch = make_batch(seed=5)
    ref_log_prob = batch.old_log_prob + 0.5 * torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(6),
                                                           dtype=DTYPE)
    config = actor_config("vanilla", **case.actor)
    theirs = verl_actor_loss(batch, config, case.info, ref_log_prob if config.use_kl_loss else None)
    loss_fn = ComposerLoss(ComposerConfig.from_mapping({"policy": case.policy}))
    log_prob = batch.log_prob.clone().requires_grad_()
    inputs = PolicyInputs(log_prob=log_prob, advantages=batch.advantages, mask=batch.mask,
                          old_log_prob=batch.old_log_prob, ref_log_prob=ref_log_prob if config.use_kl_loss else None)
    result = loss_fn(policy=inputs, normaliser=case.info.normaliser())
    metrics = {stat: result.metrics[f"policy/{stat}"] for stat in METRIC_NAMES.values()}
    assert_parity(outcome(result.loss, log_prob, metrics), theirs)


# ---------------------------------------------------------------- advantage estimators




def verl_advantages(name: str, token_rewards: torch.Tensor, mask: torch.Tensor, uids: np.ndarray,
                    **kwargs: Any) -> torch.Tensor:
    """verl's registered estimator with the keywords its trainer passes (int mask, numpy uid index)."""
    estimator = core_algos.get_adv_estimator_fn(name)
    advantages, _ = estimator(token_level_rewards=token_rewards, response_mask=mask.long(), index=uids, **kwargs)
    return advantages


def our_advantages(name: str, rewards: torch.Tensor, mask: torch.Tensor, uids: np.ndarray,
                   **params: Any) -> torch.Tensor:
    estimator = composer_registries().advantage_estimators.get(name)
    return estimator.fn(make_inputs(rewards, mask, uids), estimator.make_params(params))


ESTIMATOR_CASES = {
    "grpo": ("grpo", {"norm_adv_by_std_in_grpo": True}, "grpo", {}),
    "grpo-no-std": ("grpo", {"norm_adv_by_std_in_grpo": False}, "dr_grpo", {}),
    "rloo": ("rloo", {}, "rloo", {}),
    "reinforce_plus_plus": ("reinforce_plus_plus", {"config": verl_algorithm.AlgoConfig(gamma=1.0)},
                            "reinforce_plus_plus", {"gamma": 1.0}),
    "reinforce_plus_plus_baseline": ("reinforce_plus_plus_baseline", {}, "reinforce_plus_plus_baseline", {}),
}


@pytest.mark.parametrize("case_name", list(ESTIMATOR_CASES))
def test_advantage_estimator_matches_verl(case_name: str) -> None:
    """Outcome rewards, groups of sizes 4, 2, 5, 3, 6 in shuffled order, one group with zero spread."""
    verl_name, verl_kwargs, our_name, params = ESTIMATOR_CASES[case_name]
    rollouts = make_rollouts(seed=7, group_sizes=(4, 2, 5, 3, 6))
    theirs = verl_advantages(verl_name, rollouts.token_rewards(), rollouts.mask, rollouts.uids, **verl_kwargs)
    ours = our_advantages(our_name, rollouts.scores, rollouts.mask, rollouts.uids, **params)
    assert bool(theirs.abs().sum() > 0)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_plus_plus_token_rewards_match_verl(gamma: float) -> None:
    """Rewards on several tokens (and on masked-out ones, which both ignore), discounted across holes."""
    rollouts = make_rollouts(seed=8, group_sizes=(3, 3, 4))
    rewards = torch.randn(rollouts.mask.shape, generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    theirs = verl_advantages("reinforce_plus_plus", rewards, rollouts.mask, rollouts.uids,
                             config=verl_algorithm.AlgoConfig(gamma=gamma))
    ours = our_advantages("reinforce_plus_plus", rewards, rollouts.mask, rollouts.uids, gamma=gamma)
    torch.testing.assert_close(ours, theirs, **TOL)


SINGLETON_CASES = ["grpo", "grpo-no-std", "rloo", "reinforce_plus_plus_baseline"]


@pytest.mark.parametrize("case_name", SINGLETON_CASES)
def test_singleton_groups_refused_by_default(case_name: str) -> None:
    """verl silently uses mean 0, std 1 for a one-sample group; ours stops, naming the rows and the fix."""
    _, _, our_name, _ = ESTIMATOR_CASES[case_name]
    rollouts = make_rollouts(seed=10, group_sizes=(3, 1, 4, 1))
    alone = sorted(i for i, uid in enumerate(rollouts.uids) if list(rollouts.uids).count(uid) == 1)
    with pytest.raises(BatchError) as error:
        our_advantages(our_name, rollouts.scores, rollouts.mask, rollouts.uids)
    assert str(alone) in str(error.value)
    assert "singleton_group='verl'" in str(error.value)


@pytest.mark.parametrize("case_name", SINGLETON_CASES)
def test_singleton_groups_match_verl_when_asked(case_name: str) -> None:
    verl_name, verl_kwargs, our_name, _ = ESTIMATOR_CASES[case_name]
    rollouts = make_rollouts(seed=10, group_sizes=(3, 1, 4, 1))
    theirs = verl_advantages(verl_name, rollouts.token_rewards(), rollouts.mask, rollouts.uids, **verl_kwargs)
    ours = our_advantages(our_name, rollouts.scores, rollouts.mask, rollouts.uids, singleton_group="verl")
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize(("objective", "norm_by_std"), [("grpo", True), ("dr_grpo", False)])
def test_compute_advantages_pairs_objective_with_verl_estimator(objective: str, norm_by_std: bool) -> None:
    """The config entry point picks the objective's estimator: grpo -> verl grpo, dr_grpo -> verl grpo without std."""
    rollouts = make_rollouts(seed=11, group_sizes=(2, 5, 3))
    ours = compute_advantages(PolicyConfig(objective={"name": objective}), rollouts.scores, rollouts.mask,
                              rollouts.uids)
    theirs = verl_advantages("grpo", rollouts.token_rewards(), rollouts.mask, rollouts.uids,
                             norm_adv_by_std_in_grpo=norm_by_std)
    torch.testing.assert_close(ours, theirs, **TOL)


# ---------------------------------------------------------------- KL estimators


KL_CASES = {  # verl name -> (our estimator, straight_through); k3 always with verl's clamps
    "k1": ("k1", False), "kl": ("k1", False), "k2": ("k2", False), "mse": ("k2", False), "abs": ("abs", False),
    "k3": ("k3", False), "low_var_kl": ("k3", False), "k1+": ("k1", True), "k3+": ("k3", True),
    "abs+": ("abs", True),
}


def kl_inputs(extreme: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_prob, ref_log_prob); the extreme set has log-ratios beyond 20 and k3 values beyond 10."""
    gen = torch.Generator().manual_seed(12)
    log_prob = -3 * torch.rand(6, 9, generator=gen, dtype=DTYPE)
    if extreme:
        shifts = torch.tensor([-30.0, -21.0, -12.0, 5.0, 22.0, 0.3], dtype=DTYPE).unsqueeze(-1)
        return log_prob, log_prob + shifts + torch.randn(6, 9, generator=gen, dtype=DTYPE)
    return log_prob, log_prob + 0.6 * torch.randn(6, 9, generator=gen, dtype=DTYPE)


def kl_value_and_grads(fn: Any, log_prob: torch.Tensor, ref_log_prob: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-token estimate and the gradients of a weighted sum of it w.r.t. both log-prob tensors."""
    leaves = log_prob.clone().requires_grad_(), ref_log_prob.clone().requires_grad_()
    value = fn(*leaves)
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=DTYPE).reshape(value.shape)
    grads = torch.autograd.grad((value * weights).sum(), leaves)
    return value.detach(), *grads


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize("verl_name", list(KL_CASES))
def test_kl_estimator_matches_verl(verl_name: str, extreme: bool) -> None:
    estimator, straight_through = KL_CASES[verl_name]
    clamps = {"clamp": 10.0, "log_ratio_clamp": 20.0} if estimator == "k3" else {}
    log_prob, ref_log_prob = kl_inputs(extreme)
    theirs = kl_value_and_grads(lambda lp, ref: core_algos.kl_penalty(lp, ref, verl_name), log_prob, ref_log_prob)
    ours = kl_value_and_grads(lambda lp, ref: kl_estimate(lp, ref, estimator, straight_through=straight_through,
                                                          **clamps), log_prob, ref_log_prob)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, **TOL)
    if extreme and estimator == "k3":
        assert bool((theirs[0] == 10).any()), "the extreme inputs must reach verl's k3 clamp"


def reward_inputs(extreme: bool = False) -> tuple[Rollouts, torch.Tensor, torch.Tensor]:
    """Rollouts plus behaviour and reference log-probs (off-mask entries arbitrary, as in padding); the extreme
    set shifts some rows' log-ratios beyond +-20."""
    rollouts = make_rollouts(seed=13, group_sizes=(4, 3, 5))
    gen = torch.Generator().manual_seed(14)
    old_log_prob = -3 * torch.rand(rollouts.mask.shape, generator=gen, dtype=DTYPE)
    ref_log_prob = old_log_prob + 0.5 * torch.randn(rollouts.mask.shape, generator=gen, dtype=DTYPE)
    if extreme:
        ref_log_prob = ref_log_prob + torch.tensor([25.0, -25.0, 0.0], dtype=DTYPE).repeat(4).unsqueeze(-1)
    return rollouts, old_log_prob, ref_log_prob


def test_kl_penalised_rewards_match_verl_compute_rewards() -> None:
    """verl's `compute_rewards` is k1 in the reward, unmasked; on the response tokens it equals ours."""
    rollouts, old_log_prob, ref_log_prob = reward_inputs()
    theirs = core_algos.compute_rewards(rollouts.token_rewards(), old_log_prob, ref_log_prob, 0.05)
    ours = kl_penalised_rewards(rollouts.token_rewards(), old_log_prob, ref_log_prob, rollouts.mask, 0.05)
    torch.testing.assert_close(ours[rollouts.mask], theirs[rollouts.mask], **TOL)
    torch.testing.assert_close(ours[~rollouts.mask], rollouts.token_rewards()[~rollouts.mask], **TOL)


@pytest.mark.parametrize("extreme", [False, True], ids=["moderate", "extreme"])
@pytest.mark.parametrize(("verl_penalty", "estimator"), [("kl", "k1"), ("abs", "abs"), ("mse", "k2"),
                                                         ("low_var_kl", "k3")])
@pytest.mark.parametrize("verl_estimator", ["grpo", "reinforce_plus_plus"])
def test_kl_in_reward_then_advantages_match_verl(verl_penalty: str, estimator: str, verl_estimator: str,
                                                 extreme: bool) -> None:
    """verl's trainer with use_kl_in_reward (`apply_kl_penalty`: rewards - beta * kl_penalty(old, ref) * mask, then
    the estimator; the function itself lives in ray_trainer, whose import needs the whole trainer stack) against
    our config entry point with KL placed in the reward, k3 with verl's clamps."""
    rollouts, old_log_prob, ref_log_prob = reward_inputs(extreme)
    penalty = core_algos.kl_penalty(old_log_prob, ref_log_prob, verl_penalty) * rollouts.mask
    algorithm = verl_algorithm.AlgoConfig(gamma=0.95, use_kl_in_reward=True, kl_penalty=verl_penalty)
    theirs = verl_advantages(verl_estimator, rollouts.token_rewards() - 0.05 * penalty, rollouts.mask,
                             rollouts.uids, config=algorithm)
    params = {"gamma": 0.95} if verl_estimator == "reinforce_plus_plus" else {}
    config = PolicyConfig(objective={"name": "grpo"}, advantage={"name": verl_estimator, "params": params},
                          kl={"coef": 0.05, "placement": "reward", "estimator": estimator,
                              **({"clamp": 10, "log_ratio_clamp": 20} if estimator == "k3" else {})})
    ours = compute_advantages(config, rollouts.scores, rollouts.mask, rollouts.uids, old_log_prob=old_log_prob,
                              ref_log_prob=ref_log_prob)
    torch.testing.assert_close(ours, theirs, **TOL)
