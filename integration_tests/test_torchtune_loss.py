"""The torchtune loss components: parity with composer-core and with torchtune's own GRPO losses, the YAML route.

torchtune's GRPO losses live only on its GitHub main (`torchtune/dev/grpo/loss.py`, not in the 0.6.1 wheel), so
their formulas are restated below from reading that file: `GRPOLoss` (token ratio clipped to 1 +- epsilon, one
masked token mean over the batch, k3 KL) and `GRPOSimpleLoss` (ratio `exp(pi - sg(pi))`, per-sequence masked
token mean then batch mean, k3 KL). torchtune's `rlhf.masked_mean` is `(x * m).sum(dim) / (m.sum(dim) + 1e-8)`.
Inputs follow its recipe: (B*G, L) sampled-token log-probs with padding filled with 1.0, advantages (B*G,), and
`padding_masks` True on response tokens. Only the YAML tests need torchtune installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from pydantic import Field

from composer_core import (
    BatchError,
    ComposerConfig,
    ComposerLoss,
    ConfigError,
    DistillInputs,
    EmptyDistillMaskWarning,
    PolicyInputs,
)
from composer_core.config import DEFAULT_JOB
from composer_core.distill import teacher_topk
from composer_core.errors import NonFiniteError
from composer_core.objectives import Objective, ObjectiveParams, PolicyBatch, TokenLoss
from composer_core.plugins import hookimpl, register_plugin, unregister_plugin
from composer_torchtune import ComposerCompositeLoss, ComposerGRPOLoss, loss_section

pytestmark = pytest.mark.backend("torchtune")

BATCH, LENGTH, VOCAB = 8, 12, 13
TOL = {"rtol": 1e-7, "atol": 1e-9}  # float64; torchtune's +1e-8 in each denominator stays below this
ROOT = Path(__file__).resolve().parents[1]


def make_batch(seed: int = 0, padded: bool = True, fill: float = 1.0) -> dict[str, torch.Tensor]:
    """torchtune's recipe batch: pi 0.3 nats from old (so a 0.2 clip fires), ref 0.2 nats away, padding = fill."""
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(BATCH, LENGTH, generator=generator, dtype=torch.float64) * 3
    pi = old + 0.3 * torch.randn(BATCH, LENGTH, generator=generator, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(BATCH, LENGTH, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, LENGTH + 1, (BATCH,), generator=generator) if padded else torch.full((BATCH,), LENGTH)
    mask = torch.arange(LENGTH).unsqueeze(0) < lengths.unsqueeze(1)
    fill_value = torch.tensor(fill, dtype=torch.float64)
    pi, old, ref = (torch.where(mask, tensor, fill_value) for tensor in (pi, old, ref))
    return {"pi_old_logprobs": old, "pi_logprobs": pi.requires_grad_(), "ref_logprobs": ref,
            "advantages": torch.randn(BATCH, generator=generator, dtype=torch.float64), "padding_masks": mask}


def call(loss: torch.nn.Module, batch: dict[str, torch.Tensor], **extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """torchtune's call: four positional tensors and padding_masks by keyword."""
    return loss(batch["pi_old_logprobs"], batch["pi_logprobs"], batch["ref_logprobs"], batch["advantages"],
                padding_masks=batch["padding_masks"], **extra)


def grad_of(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, leaf, retain_graph=True)[0]  # composite batches share pi's graph


# ------------------------------------------------------------ torchtune main's formulas, restated


def tt_masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum(dim=dim) / (mask.sum(dim=dim) + 1e-8)


def k3(pi: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """exp(ref - pi) - (ref - pi) - 1, as both torchtune losses write it."""
    return torch.exp(ref - pi) - (ref - pi) - 1


def torchtune_grpo_loss(batch: dict[str, torch.Tensor], epsilon: float, kl_coeff: float) -> tuple[torch.Tensor, ...]:
    """GRPOLoss: objective min(A r, A clip(r, 1-eps, 1+eps)) and k3, each a masked token mean over the batch;
    loss = -(policy - kl_coeff * kl); ratios = mean of r over every position; clipfrac = masked mean of
    (clipped objective < unclipped)."""
    pi, old, ref, mask = batch["pi_logprobs"], batch["pi_old_logprobs"], batch["ref_logprobs"], batch["padding_masks"]
    advantages = batch["advantages"][:, None]
    ratio = torch.exp(pi - old)
    unclipped, clipped = advantages * ratio, advantages * ratio.clamp(1 - epsilon, 1 + epsilon)
    policy = tt_masked_mean(torch.minimum(clipped, unclipped), mask)
    kl = tt_masked_mean(k3(pi, ref), mask)
    clipfrac = tt_masked_mean((clipped < unclipped).float(), mask)
    return -(policy - kl_coeff * kl), policy.detach(), kl.detach(), ratio.mean().detach(), clipfrac


def torchtune_grpo_simple_loss(batch: dict[str, torch.Tensor], kl_coeff: float) -> tuple[torch.Tensor, ...]:
    """GRPOSimpleLoss: per token -(exp(pi - sg(pi)) A - kl_coeff k3(sg(ref))), a masked token mean per sequence,
    then the mean over sequences; pi_old_logprobs unused; ratios 1 and clipfrac 0 as constants."""
    pi, ref, mask = batch["pi_logprobs"], batch["ref_logprobs"].detach(), batch["padding_masks"]
    kl = k3(pi, ref)
    policy = torch.exp(pi - pi.detach()) * batch["advantages"][:, None]
    loss = tt_masked_mean(-(policy - kl_coeff * kl), mask, dim=1).mean()
    return (loss, tt_masked_mean(policy, mask, dim=1).mean().detach(), tt_masked_mean(kl, mask, dim=1).mean().detach(),
            torch.tensor(1.0), torch.tensor(0.0))


# ------------------------------------------------------------ parity with torchtune main


@pytest.mark.parametrize(("arguments", "epsilon", "kl_coeff"), [
    ({"objective": "dapo", "epsilon": 0.2, "kl_coeff": 0.05}, 0.2, 0.05),
    ({}, 0.1, 0.1),  # the defaults of both
])
def test_dapo_is_torchtune_grpo_loss(arguments: dict, epsilon: float, kl_coeff: float) -> None:
    batch = make_batch()
    ours = call(ComposerGRPOLoss(**arguments), batch)
    theirs = torchtune_grpo_loss(batch, epsilon, kl_coeff)
    for name, mine, reference in zip(("loss", "policy_loss", "kl_loss", "clipfrac"), ours[:3] + ours[4:],
                                     theirs[:3] + theirs[4:], strict=True):
        torch.testing.assert_close(mine, reference.to(mine.dtype), **TOL, msg=name)
    torch.testing.assert_close(grad_of(ours[0], batch["pi_logprobs"]), grad_of(theirs[0], batch["pi_logprobs"]), **TOL)
    assert 0.05 < float(ours[4]) < 0.95, "the clip must fire on some tokens and not on others"
    assert all(value.dim() == 0 and not value.requires_grad for value in ours[1:])


def test_ratios_are_a_mean_over_response_tokens() -> None:
    """torchtune averages r over every position (its recipe's 1.0 padding gives r = 1 there); ours over the mask,
    so the two agree without padding and ours never reads padding."""
    full = make_batch(padded=False)
    torch.testing.assert_close(call(ComposerGRPOLoss(), full)[3].double(), torchtune_grpo_loss(full, 0.1, 0.1)[3])
    batch = make_batch()
    ratio = torch.exp(batch["pi_logprobs"] - batch["pi_old_logprobs"]).detach()[batch["padding_masks"]]
    torch.testing.assert_close(call(ComposerGRPOLoss(), batch)[3].double(), ratio.mean())


def test_grpo_is_torchtune_grpo_simple_loss_on_policy() -> None:
    """GRPOSimpleLoss ignores pi_old_logprobs (one gradient step per batch): on-policy, objective grpo equals it."""
    batch = make_batch()
    batch["pi_old_logprobs"] = batch["pi_logprobs"].detach()
    ours = call(ComposerGRPOLoss(epsilon=0.2, kl_coeff=0.01, objective="grpo"), batch)
    theirs = torchtune_grpo_simple_loss(batch, 0.01)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference.to(mine.dtype), **TOL)
    torch.testing.assert_close(grad_of(ours[0], batch["pi_logprobs"]), grad_of(theirs[0], batch["pi_logprobs"]), **TOL)


def test_grpo_differs_from_token_mean_when_lengths_differ() -> None:
    """The parity tests can fail: grpo's per-sequence mean is not GRPOLoss's token mean on a padded batch."""
    batch = make_batch()
    batch["pi_old_logprobs"] = batch["pi_logprobs"].detach()
    ours = call(ComposerGRPOLoss(objective="grpo"), batch)[0]
    assert abs(float(ours.detach() - torchtune_grpo_loss(batch, 0.1, 0.1)[0].detach())) > 1e-3


# ------------------------------------------------------------ parity with the core


class ScaleParams(ObjectiveParams):
    scale: float = Field(1.0, gt=0)


def scaled_reinforce(batch: PolicyBatch, params: ScaleParams) -> TokenLoss:
    """`-scale * A * log pi`: a plugin objective with a setting of its own."""
    return TokenLoss(-params.scale * batch.advantages * batch.log_prob)


class ScaledReinforcePlugin:
    @hookimpl
    def register_objectives(self, register: Callable[[Objective], None]) -> None:
        register(Objective("tt_scaled_reinforce", scaled_reinforce, ScaleParams, "token-mean", "grpo", "test"))


@pytest.fixture
def plugin_objective() -> Iterator[str]:
    register_plugin(ScaledReinforcePlugin(), "torchtune_test_plugin")
    yield "tt_scaled_reinforce"
    unregister_plugin("torchtune_test_plugin")


CORE_CASES = {  # id: (component arguments, the core's policy.objective and policy.kl)
    "dapo clip-higher": ({"objective": "dapo", "epsilon": 0.2, "epsilon_high": 0.28},
                         {"name": "dapo"}, {"coef": 0.05}),
    "grpo default epsilon": ({"objective": "grpo"}, {"name": "grpo", "params": {"clip_ratio_low": 0.1,
                                                                                 "clip_ratio_high": 0.1}}, {}),
    "dr_grpo k1": ({"objective": "dr_grpo", "epsilon": 0.2, "kl_estimator": "k1"}, {"name": "dr_grpo"},
                   {"estimator": "k1"}),
    "ppo dual clip": ({"objective": "ppo", "epsilon": 0.2, "dual_clip_c": 2.5},
                      {"name": "ppo", "params": {"dual_clip_c": 2.5}}, {}),
    "gspo own bounds": ({"objective": "gspo"}, {"name": "gspo"}, {}),
    "cispo own bounds": ({"objective": "cispo"}, {"name": "cispo"}, {}),
    "sapo": ({"objective": "sapo", "tau_neg": 1.2}, {"name": "sapo", "params": {"tau_neg": 1.2}}, {}),
    "reinforce, seq-mean aggregation": ({"objective": "reinforce", "aggregation": "seq-mean-token-mean"},
                                        {"name": "reinforce", "aggregation": "seq-mean-token-mean"}, {}),
    "kl extras": ({"objective": "bnpo", "epsilon": 0.2, "kl_clamp": 10.0, "kl_log_ratio_clamp": 20.0,
                   "kl_importance_weighted": True}, {"name": "bnpo"},
                  {"clamp": 10.0, "log_ratio_clamp": 20.0, "importance_weighted": True}),
}


def core_loss(objective: dict, kl: dict) -> ComposerLoss:
    return ComposerLoss(ComposerConfig.from_mapping({"policy": {"objective": objective,
                                                                "kl": {"coef": 0.1, **kl}}}))


def assert_equals_core(component: ComposerGRPOLoss, core: ComposerLoss, batch: dict[str, torch.Tensor]) -> None:
    ours = call(component, batch)
    inputs = PolicyInputs(batch["pi_logprobs"], batch["advantages"], batch["padding_masks"],
                          old_log_prob=batch["pi_old_logprobs"], ref_log_prob=batch["ref_logprobs"])
    theirs, metrics = core.policy_loss(inputs)
    torch.testing.assert_close(ours[0], theirs, **TOL)
    torch.testing.assert_close(grad_of(ours[0], batch["pi_logprobs"]), grad_of(theirs, batch["pi_logprobs"]), **TOL)
    assert component.metrics == metrics
    kl = component.config.policy.kl
    torch.testing.assert_close(ours[0].detach(), -(ours[1] - kl.coef * ours[2]), **TOL)  # torchtune's identity
    assert float(ours[4]) == pytest.approx(metrics.get("policy/clipfrac", 0.0))


@pytest.mark.parametrize("case", CORE_CASES)
def test_component_equals_core_objective(case: str) -> None:
    arguments, objective, kl = CORE_CASES[case]
    component = ComposerGRPOLoss(**{"kl_coeff": kl.get("coef", 0.1), **arguments})
    assert component.core.objective == core_loss(objective, kl).objective  # the same resolved settings
    assert_equals_core(component, core_loss(objective, kl), make_batch(seed=3))


def test_plugin_objective_with_its_own_setting(plugin_objective: str) -> None:
    batch = make_batch(seed=4)
    component = ComposerGRPOLoss(objective=plugin_objective, kl_coeff=0.0, scale=2.5)
    assert_equals_core(component, core_loss({"name": plugin_objective, "params": {"scale": 2.5}}, {"coef": 0.0}),
                       batch)
    mask = batch["padding_masks"]
    expected = -(2.5 * batch["advantages"][:, None] * batch["pi_logprobs"])[mask].mean()
    torch.testing.assert_close(call(component, batch)[0], expected, **TOL)


def test_padding_is_never_read() -> None:
    """NaN in the padding (torchtune fills 1.0) changes nothing: the core reads inside the mask only."""
    clean, poisoned = make_batch(seed=5), make_batch(seed=5, fill=float("nan"))
    loss = ComposerGRPOLoss(objective="dapo", epsilon=0.2)
    for mine, reference in zip(call(loss, poisoned), call(loss, clean), strict=True):
        torch.testing.assert_close(mine, reference, **TOL)
    torch.testing.assert_close(grad_of(call(loss, poisoned)[0], poisoned["pi_logprobs"]),
                               grad_of(call(loss, clean)[0], clean["pi_logprobs"]), **TOL)


# ------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(("arguments", "message"), [
    ({"objective": "nope"}, r"ComposerGRPOLoss.*unknown objective 'nope'.*dapo"),
    ({"clip_ratio_low": 0.3}, r"got clip_ratio_low \(use torchtune's epsilon / epsilon_high\).*accepts epsilon"),
    ({"tau_pos": 1.0}, r"got tau_pos: neither an argument of the loss nor a setting of objective 'dapo', which "
                       r"accepts epsilon, epsilon_high \(its clip bounds\), dual_clip_c, log_ratio_clamp"),
    ({"objective": "sapo", "epsilon": 0.2}, r"objective 'sapo' has no clip bounds, so epsilon cannot apply"),
    ({"epsilon": -0.1}, r"clip_ratio_low: Input should be greater than or equal to 0"),
    ({"kl_estimator": "k9"}, r"policy\.kl\.estimator"),
    ({"aggregation": "token-avg"}, r"policy\.objective\.aggregation"),
])
def test_bad_settings_are_config_errors(arguments: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ComposerGRPOLoss(**arguments)


def _replace(batch: dict[str, torch.Tensor], **values: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**batch, **values}


@pytest.mark.parametrize(("change", "error", "message"), [
    (lambda b: _replace(b, ref_logprobs=b["ref_logprobs"][:, :-1]), BatchError,
     r"ref_logprobs has shape \(8, 11\) but pi_logprobs has shape \(8, 12\)"),
    (lambda b: _replace(b, advantages=b["advantages"][:, None]), BatchError,
     r"advantages has shape \(8, 1\); expected \(8,\), one per sequence"),
    (lambda b: _replace(b, padding_masks=b["padding_masks"][:-1]), BatchError, r"padding_masks has shape \(7, 12\)"),
    (lambda b: _replace(b, padding_masks=b["padding_masks"] * 2), BatchError, r"padding_masks must hold only 0 and 1"),
    (lambda b: _replace(b, pi_logprobs=b["pi_logprobs"][0]), BatchError, r"pi_logprobs must be a \(batch \* group"),
    (lambda b: _replace(b, pi_old_logprobs=torch.where(b["padding_masks"], float("nan"), 0.0).double()),
     NonFiniteError, r"old_log_prob holds a non-finite value"),
    (lambda b: _replace(b, padding_masks=b["padding_masks"] & (torch.arange(BATCH) > 0)[:, None]), BatchError,
     r"rows with no tokens: \[0\]"),
])
def test_bad_tensors_are_named(change: Callable, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call(ComposerGRPOLoss(), change(make_batch()))


def test_ref_logprobs_may_be_none_only_without_kl() -> None:
    batch = _replace(make_batch(), ref_logprobs=None)
    assert float(call(ComposerGRPOLoss(kl_coeff=0.0), batch)[2]) == 0.0
    with pytest.raises(BatchError, match="needs ref_log_prob"):
        call(ComposerGRPOLoss(), batch)


# ------------------------------------------------------------ the composite loss (channel 2)


def distill_batch(seed: int = 6, temperature: float = 0.7) -> dict[str, torch.Tensor]:
    """A recipe batch whose pi_logprobs are the student's log-probs of its sampled tokens at the temperature."""
    generator = torch.Generator().manual_seed(seed)
    batch = make_batch(seed)
    student = torch.randn(BATCH, LENGTH, VOCAB, generator=generator, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)
    pi = torch.log_softmax(student / temperature, -1).gather(-1, tokens[..., None])[..., 0]
    mask = batch["padding_masks"]
    return {**batch, "pi_logprobs": torch.where(mask, pi, 1.0), "student_logits": student, "token_ids": tokens,
            "teacher_logits": torch.randn(BATCH, LENGTH, VOCAB, generator=generator, dtype=torch.float64),
            "pi_old_logprobs": torch.where(mask, pi.detach() + 0.2 * torch.randn(pi.shape, generator=generator,
                                                                                   dtype=torch.float64), 1.0),
            "distill_mask": torch.rand(BATCH, LENGTH, generator=generator) < 0.6}


POLICY_ARGUMENTS = {"objective": "dr_grpo", "epsilon": 0.2, "kl_coeff": 0.02}
DISTILL = {"weight": 0.5, "alpha": 0.5, "support": "teacher_topk", "top_k": 5, "temperature": 0.7, "is_clip": 2.0}


def composite_call(loss: ComposerCompositeLoss, batch: dict[str, torch.Tensor], teacher: str) -> tuple:
    if teacher == "logits":
        extra = {"teacher_logits": batch["teacher_logits"], "token_ids": batch["token_ids"]}
    else:
        ids, log_probs = teacher_topk(batch["teacher_logits"], DISTILL["top_k"], DISTILL["temperature"])
        extra = {"teacher_topk_ids": ids, "teacher_topk_log_probs": log_probs.double()}
    return call(loss, batch, student_logits=batch["student_logits"], distill_mask=batch["distill_mask"], **extra)


def test_composite_equals_the_core_composer_loss() -> None:
    batch = distill_batch()
    composite = ComposerCompositeLoss(**POLICY_ARGUMENTS, policy_weight=0.8, distill=DISTILL)
    ours = composite_call(composite, batch, "logits")
    config = ComposerConfig.from_mapping({"policy": {"weight": 0.8, "objective": {"name": "dr_grpo"},
                                                     "kl": {"coef": 0.02}}, "distill": DISTILL})
    mask = batch["padding_masks"]
    theirs = ComposerLoss(config)(
        policy=PolicyInputs(batch["pi_logprobs"], batch["advantages"], mask, old_log_prob=batch["pi_old_logprobs"],
                            ref_log_prob=batch["ref_logprobs"]),
        distill=DistillInputs(batch["student_logits"], batch["teacher_logits"], batch["distill_mask"] & mask,
                              response_mask=mask, token_ids=batch["token_ids"], old_log_prob=batch["pi_old_logprobs"]))
    torch.testing.assert_close(ours[0], theirs.loss, **TOL)
    torch.testing.assert_close(grad_of(ours[0], batch["student_logits"]), grad_of(theirs.loss, batch["student_logits"]),
                               **TOL)
    assert composite.metrics == theirs.metrics
    assert composite.metrics["distill/loss"] > 0 and 0 < composite.metrics["distill/coverage"] < 1
    expected = 0.8 * -(ours[1] - 0.02 * ours[2]) + 0.5 * composite.metrics["distill/loss"]
    torch.testing.assert_close(ours[0].detach(), expected, **TOL)


def test_teacher_topk_tensors_equal_full_teacher_logits() -> None:
    """The top-K route (no teacher logits at training time) gives the same loss, gradients and metrics, up to the
    float32 in which the core's `teacher_topk` ships the teacher's log-probs."""
    batch = distill_batch()
    composite = ComposerCompositeLoss(**POLICY_ARGUMENTS, distill=DISTILL)
    full = composite_call(composite, batch, "logits")
    full_metrics = composite.metrics
    topk = composite_call(composite, batch, "topk")
    float32 = {"rtol": 1e-6, "atol": 1e-7}
    torch.testing.assert_close(topk[0], full[0], **float32)
    torch.testing.assert_close(grad_of(topk[0], batch["student_logits"]), grad_of(full[0], batch["student_logits"]),
                               **float32)
    assert composite.metrics == pytest.approx(full_metrics, rel=1e-6)


def test_a_non_finite_teacher_log_prob_is_named_on_targeted_tokens_only() -> None:
    """The top-K route checks its per-token loss from one probe read with the metrics; a NaN in the teacher's
    log-probs is named when a targeted token reads it, and ignored off the distillation mask."""
    batch = distill_batch()
    composite = ComposerCompositeLoss(**POLICY_ARGUMENTS, distill=DISTILL)
    ids, log_probs = teacher_topk(batch["teacher_logits"], DISTILL["top_k"], DISTILL["temperature"])
    targeted = (batch["distill_mask"] & batch["padding_masks"]).nonzero()[0].tolist()
    untargeted = (~batch["distill_mask"] & batch["padding_masks"]).nonzero()[0].tolist()
    for (row, column), raises in ((untargeted, False), (targeted, True)):
        poisoned = log_probs.double().clone()
        poisoned[row, column, 0] = float("nan")
        arguments = {"student_logits": batch["student_logits"], "distill_mask": batch["distill_mask"],
                     "teacher_topk_ids": ids, "teacher_topk_log_probs": poisoned}
        if raises:
            with pytest.raises(NonFiniteError, match="distillation per-token loss"):
                call(composite, batch, **arguments)
        else:
            assert torch.isfinite(call(composite, batch, **arguments)[0])


@pytest.mark.parametrize("teacher", ["logits", "topk"])
def test_empty_distill_mask_is_reported_not_silent(teacher: str) -> None:
    batch = {**distill_batch(), "distill_mask": torch.zeros(BATCH, LENGTH, dtype=torch.bool)}
    composite = ComposerCompositeLoss(**POLICY_ARGUMENTS, distill=DISTILL)
    with pytest.warns(EmptyDistillMaskWarning, match="no targeted token"):
        loss = composite_call(composite, batch, teacher)[0]
    assert composite.metrics["distill/empty_mask"] == 1.0 and composite.metrics["distill/loss"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; counted every time
        composite_call(composite, batch, teacher)
    assert composite.metrics["distill/empty_mask_events"] == 2.0
    policy_only = call(ComposerGRPOLoss(**POLICY_ARGUMENTS), batch)[0]
    torch.testing.assert_close(loss, policy_only, **TOL)
    loss.backward()  # the zero term keeps the graph connected


@pytest.mark.parametrize(("arguments", "extra", "error", "message"), [
    ({}, {"student_logits": True}, ConfigError, r"student_logits given but self-distillation is off"),
    ({"distill": DISTILL}, {}, BatchError, r"pass student_logits .* and distill_mask"),
    ({"distill": DISTILL}, {"student_logits": True, "distill_mask": True}, BatchError,
     r"either as teacher_logits, or as both"),
])
def test_composite_refuses_missing_or_unused_teacher_inputs(arguments: dict, extra: dict, error: type,
                                                            message: str) -> None:
    batch = distill_batch()
    with pytest.raises(error, match=message):
        call(ComposerCompositeLoss(**arguments), batch, **{name: batch[name] for name in extra})


def test_composite_with_every_channel_off_is_refused() -> None:
    with pytest.raises(ConfigError, match="policy_weight and distill.weight are both 0"):
        ComposerCompositeLoss(policy_weight=0.0)


# ------------------------------------------------------------ from the experiment config, and the YAML route


CONFIGS = {
    "library default": {},
    "default job": DEFAULT_JOB,
    "dapo with settings": {"policy": {"objective": {"name": "dapo", "params": {"clip_ratio_high": 0.3,
                                                                             "dual_clip_c": 3.0}},
                                      "kl": {"coef": 0.04, "estimator": "k1", "clamp": 5.0}}},
    "gspo, distillation only": {"policy": {"weight": 0.0, "objective": {"name": "gspo"}},
                                "distill": {"weight": 1.0, "support": "student_topk", "top_k": 20}},
}


def assert_same_loss(loss: ComposerGRPOLoss | ComposerCompositeLoss, config: ComposerConfig) -> None:
    assert loss.core.objective == config.policy.objective.resolve()
    assert (loss.config.policy.kl, loss.config.policy.weight) == (config.policy.kl, config.policy.weight)
    assert loss.config.distill == config.distill


@pytest.mark.parametrize("name", CONFIGS)
def test_from_config_reproduces_the_experiment_loss(name: str) -> None:
    config = ComposerConfig.from_mapping(CONFIGS[name])
    component = ComposerCompositeLoss if config.distill.weight > 0 or config.policy.weight != 1 else ComposerGRPOLoss
    assert loss_section(config)["_component_"] == f"composer_torchtune.{component.__name__}"
    assert_same_loss(component.from_config(config), config)


def test_grpo_loss_from_a_distillation_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="ComposerCompositeLoss.from_config"):
        ComposerGRPOLoss.from_config(ComposerConfig.from_mapping(DEFAULT_JOB))
    with pytest.raises(ConfigError, match="no trace-replay DPO channel"):
        loss_section(ComposerConfig.from_mapping({"preference": {"weight": 0.5}}))


YAML = """
loss:
  _component_: composer_torchtune.ComposerGRPOLoss
  objective: dapo
  epsilon: 0.2
  kl_coeff: 0.05
"""


def test_torchtune_instantiates_the_loss_from_yaml() -> None:
    pytest.importorskip("torchtune")
    from omegaconf import OmegaConf
    from torchtune import config as torchtune_config

    loss = torchtune_config.instantiate(OmegaConf.create(YAML).loss)
    assert isinstance(loss, ComposerGRPOLoss)
    batch = make_batch()
    torch.testing.assert_close(call(loss, batch)[0], torchtune_grpo_loss(batch, 0.2, 0.05)[0], **TOL)


@pytest.mark.parametrize("name", CONFIGS)
def test_printed_loss_section_instantiates_through_torchtune(name: str) -> None:
    pytest.importorskip("torchtune")
    import yaml
    from omegaconf import OmegaConf
    from torchtune import config as torchtune_config

    config = ComposerConfig.from_mapping(CONFIGS[name])
    text = yaml.safe_dump({"loss": loss_section(config)}, sort_keys=False)
    assert_same_loss(torchtune_config.instantiate(OmegaConf.create(text).loss), config)


def test_benchmark_quick_run_writes_ratios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import torchtune_loss

    assert torchtune_loss.main(["--quick", "--output", str(tmp_path)]) == 0
    import json

    results = json.loads((tmp_path / "torchtune_loss.json").read_text())["results"]
    assert {row["baseline"] for row in results} >= {"core ComposerLoss.policy_loss", "torchtune main GRPOLoss",
                                                     "torchtune main GRPOSimpleLoss"}
    assert all(row["time_ratio"] > 0 for row in results)
