"""The promise: switching a VeRL policy-loss mode to its composer twin changes nothing, under any config VeRL accepts.

Hypothesis draws configs over VeRL's own config space (every ActorConfig field a twinned mode reads, global batch
info as VeRL's actor fills it, rollout-correction weights or none) and ragged batches, builds VeRL's ActorConfig,
and calls both modes through VeRL's registry. Three outcomes are allowed:
- VeRL computes a loss: the twin computes the same loss, gradient and metric dict (same keys, same values), or,
  for the few values that make the loss meaningless (REFUSED_ON_PURPOSE), refuses them with a ConfigError;
- VeRL raises: the twin raises a composer error (a clear message, never a bare assert);
- VeRL's loss is not finite (it divided by a zero count): the twin's is not finite either (VeRL then skips the step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

pytest.importorskip("verl")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from verl_batches import DTYPE, TOL, actor_config  # noqa: E402

from composer_core.errors import ComposerError, ConfigError  # noqa: E402
from composer_core.objectives import AGGREGATION_MODES  # noqa: E402
from composer_verl import twins  # noqa: E402

pytestmark = pytest.mark.backend("verl")

# VeRL's mode -> its composer twins (composer objectives with the same math under VeRL's config)
TWINS = {"vanilla": ("ppo", "grpo", "dr_grpo", "dapo", "bnpo"), "gspo": ("gspo",), "cispo": ("cispo",),
         "sapo": ("sapo",), "gpg": ("reinforce",)}
PAIRS = [pytest.param(mode, objective, id=f"composer_{objective}~{mode}")
         for mode, objectives in TWINS.items() for objective in objectives]
CLIPPED_MODES = ("vanilla", "gspo", "cispo")
SIGNATURE_DEFAULTS = {"gspo": "seq-mean-token-mean", "sapo": "seq-mean-token-mean"}  # loss_agg_mode defaults
EXAMPLES = 150  # about a second per pair


@dataclass(frozen=True)
class Draw:
    """One drawn case: ActorConfig settings, the actor's global batch info and the loss inputs."""

    settings: dict[str, Any]
    global_batch_info: dict[str, Any]
    inputs: dict[str, Any] = field(repr=False)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def sometimes(usual: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`rare` one draw in eight: values VeRL raises on or the twin refuses are worth drawing, but not mostly."""
    return st.sampled_from([False] * 7 + [True]).flatmap(lambda pick: rare if pick else usual)


def mostly_present(count: st.SearchStrategy) -> st.SearchStrategy:
    """A global count, absent one draw in eight (with dp_size > 1 VeRL then raises)."""
    return sometimes(count, st.none())


RATIO = sometimes(st.floats(0.0, 2.5), st.floats(-0.5, 0.0, exclude_max=True))
TEMPERATURE = sometimes(st.floats(1e-3, 5.0), st.floats(-0.5, 1e-3))
ACTOR_SETTINGS = st.fixed_dictionaries({
    "loss_agg_mode": st.sampled_from(AGGREGATION_MODES),
    "clip_ratio": RATIO, "clip_ratio_low": maybe(RATIO), "clip_ratio_high": maybe(RATIO),
    "clip_ratio_c": sometimes(st.floats(1.0, 10.0, exclude_min=True), st.floats(0.5, 1.0)),
    "tau_pos": TEMPERATURE, "tau_neg": TEMPERATURE,
    "loss_scale_factor": maybe(sometimes(st.integers(1, 64), st.integers(-4, 0))),
})


@st.composite
def draws(draw: st.DrawFn) -> Draw:
    """A ragged batch (some rows empty, log-ratios from tiny to beyond VeRL's clamps, advantages of both signs and
    exact zeros) with global counts as VeRL's actor fills them: absent, or at least the local counts."""
    rows, length = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    lengths = torch.randint(0, length + 1, (rows,), generator=gen)
    lengths[draw(st.integers(0, rows - 1))] = draw(st.integers(1, length))  # at least one response token
    mask = torch.arange(length) < lengths.unsqueeze(-1)
    spread = draw(st.sampled_from([1e-3, 0.3, 1.5, 30.0]))
    old = -4 * torch.rand(rows, length, generator=gen, dtype=DTYPE) - 0.01
    log_prob = old + spread * torch.randn(rows, length, generator=gen, dtype=DTYPE)
    advantages = 1.5 * torch.randn(rows, length, generator=gen, dtype=DTYPE)
    advantages[torch.rand(rows, length, generator=gen) < 0.15] = 0.0
    weights = 2 * torch.rand(rows, length, generator=gen, dtype=DTYPE) if draw(st.booleans()) else None
    actor = draw(ACTOR_SETTINGS)
    dp_size = draw(st.sampled_from([1, 1, 2, 4]))
    tokens, sequences = int(mask.sum()), int((mask.sum(-1) > 0).sum())
    info = {"dp_size": dp_size,
            "batch_num_tokens": draw(mostly_present(st.integers(tokens, tokens + 40))),
            "global_batch_size": draw(mostly_present(st.integers(sequences, sequences + 8))),
            "loss_scale_factor": actor["loss_scale_factor"]}  # VeRL's ppo_loss copies it from the config
    inputs = {"old_log_prob": old, "log_prob": log_prob, "advantages": advantages, "response_mask": mask,
              "rollout_is_weights": weights}
    if draw(st.booleans()):  # VeRL's actor passes it; a direct caller may rely on the signature's default
        inputs["loss_agg_mode"] = actor["loss_agg_mode"]
    return Draw(actor, info, inputs)


@dataclass(frozen=True)
class Result:
    """What a loss mode did: raised, or a loss with its gradient and metrics."""

    error: BaseException | None = None
    loss: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    metrics: dict[str, float] | None = None


def run_mode(loss_mode: str, case: Draw) -> Result:
    """`loss_mode` through VeRL's registry with VeRL's keyword contract, as its actor calls it."""
    config = actor_config(loss_mode, global_batch_info=dict(case.global_batch_info), **case.settings)
    inputs = dict(case.inputs)
    log_prob = inputs.pop("log_prob").clone().requires_grad_()
    try:
        loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(log_prob=log_prob, config=config, **inputs)
        (grad,) = torch.autograd.grad(loss, log_prob, allow_unused=True)
    except (AssertionError, ValueError, TypeError) as error:
        return Result(error=error)
    return Result(loss=loss.detach(), grad=torch.zeros_like(log_prob) if grad is None else grad, metrics=metrics)


def clip_bounds(settings: dict[str, Any]) -> tuple[float, float]:
    """VeRL's reading of the clip ratios: low and high fall back to clip_ratio when null."""
    low, high = settings["clip_ratio_low"], settings["clip_ratio_high"]
    return (settings["clip_ratio"] if low is None else low, settings["clip_ratio"] if high is None else high)


def refused_on_purpose(verl_mode: str, case: Draw) -> bool:
    """Values VeRL computes with although the loss then means nothing (documented in docs/backends/verl.md):
    a negative clip ratio (the bound crosses 1), a SAPO temperature <= 0 (the gate flips sign or is infinite),
    a loss_scale_factor <= 0 where the loss is divided by it (negated or infinite loss)."""
    settings = case.settings
    if verl_mode in CLIPPED_MODES and min(clip_bounds(settings)) < 0:
        return True
    if verl_mode == "sapo" and min(settings["tau_pos"], settings["tau_neg"]) <= 0:
        return True
    aggregation = case.inputs.get("loss_agg_mode", SIGNATURE_DEFAULTS.get(verl_mode, "token-mean"))
    aggregation = "seq-mean-token-mean" if verl_mode == "sapo" else aggregation
    scale = settings["loss_scale_factor"]
    return aggregation == "seq-mean-token-sum-norm" and scale is not None and scale <= 0


def assert_same_result(ours: Result, theirs: Result) -> None:
    if not torch.isfinite(theirs.loss):
        assert not torch.isfinite(ours.loss), f"VeRL's loss is {theirs.loss}, the twin's {ours.loss}"
        return
    torch.testing.assert_close(ours.loss, theirs.loss, **TOL)
    torch.testing.assert_close(ours.grad, theirs.grad, **TOL)
    assert set(ours.metrics) == set(theirs.metrics)
    for name, value in theirs.metrics.items():
        assert ours.metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def check_twin(verl_mode: str, objective: str, case: Draw) -> None:
    theirs = run_mode(verl_mode, case)
    ours = run_mode(f"composer_{objective}", case)
    if theirs.error is not None:
        assert isinstance(ours.error, ComposerError), f"VeRL raised {theirs.error!r}; the twin gave {ours}"
    elif refused_on_purpose(verl_mode, case):
        assert isinstance(ours.error, ConfigError), f"the twin should refuse {case.settings}, gave {ours}"
    else:
        assert ours.error is None, f"VeRL computed a loss; the twin raised {ours.error!r}"
        assert_same_result(ours, theirs)


@pytest.mark.parametrize(("verl_mode", "objective"), PAIRS)
def test_twin_equals_verls_mode_over_verls_config_space(verl_mode: str, objective: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=draws())
    def property_holds(case: Draw) -> None:
        check_twin(verl_mode, objective, case)

    property_holds()


# ---------------------------------------------------------------- the edge cases, one by one


def fixed_case(seed: int = 5, **settings: Any) -> Draw:
    """A fixed ragged batch (one empty row) under VeRL's default ActorConfig plus `settings`."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(6) < torch.tensor([6, 3, 0, 5]).unsqueeze(-1)
    old = -3 * torch.rand(4, 6, generator=gen, dtype=DTYPE) - 0.05
    inputs = {"old_log_prob": old, "log_prob": old + torch.randn(4, 6, generator=gen, dtype=DTYPE),
              "advantages": torch.randn(4, 6, generator=gen, dtype=DTYPE), "response_mask": mask,
              "rollout_is_weights": None, "loss_agg_mode": settings.pop("loss_agg_mode", "token-mean")}
    info = settings.pop("global_batch_info", {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None,
                                              "loss_scale_factor": settings.get("loss_scale_factor")})
    actor = {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0, "tau_pos": 1.0,
             "tau_neg": 1.05, "loss_scale_factor": None, "loss_agg_mode": inputs["loss_agg_mode"], **settings}
    return Draw(actor, info, inputs)


def test_sapo_twin_aggregates_as_verls_sapo_whatever_loss_agg_mode_says(caplog: pytest.LogCaptureFixture) -> None:
    """VeRL's sapo ignores loss_agg_mode=token-mean (VeRL's default) and uses seq-mean-token-mean; so does the twin,
    and it says so in the log."""
    case = fixed_case(loss_agg_mode="token-mean")
    twins._warn_forced.cache_clear()  # once per process: the property test above may have said it already
    with caplog.at_level("WARNING", logger="composer_verl"):
        ours = run_mode("composer_sapo", case)
    assert_same_result(ours, run_mode("sapo", case))
    assert "loss_agg_mode=token-mean is ignored" in caplog.text


@pytest.mark.parametrize("low", [1.0, 1.5])
@pytest.mark.parametrize(("verl_mode", "objective"), [("cispo", "cispo"), ("vanilla", "ppo"), ("gspo", "gspo")])
def test_a_lower_clip_ratio_of_one_or_more_means_no_lower_bound(verl_mode: str, objective: str, low: float) -> None:
    case = fixed_case(clip_ratio_low=low, clip_ratio_high=0.3)
    ours, theirs = run_mode(f"composer_{objective}", case), run_mode(verl_mode, case)
    assert ours.error is None, ours.error
    assert_same_result(ours, theirs)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_a_batch_without_response_tokens_is_not_finite_as_in_verl(aggregation: str) -> None:
    """VeRL divides by a zero count (its engine then skips the step); a zero loss would still move the optimizer."""
    case = fixed_case(loss_agg_mode=aggregation)
    case.inputs["response_mask"] = torch.zeros_like(case.inputs["response_mask"])
    theirs, ours = run_mode("vanilla", case), run_mode("composer_ppo", case)
    assert not torch.isfinite(theirs.loss)
    assert not torch.isfinite(ours.loss)


@pytest.mark.parametrize(("objective", "settings", "key"), [
    ("sapo", {"tau_neg": 0.0}, "actor_rollout_ref.actor.tau_neg"),
    ("cispo", {"clip_ratio_high": -0.1}, "actor_rollout_ref.actor.clip_ratio_high"),
    ("ppo", {"clip_ratio_c": 1.0}, "actor_rollout_ref.actor.clip_ratio_c"),
    ("dr_grpo", {"loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 0},
     "actor_rollout_ref.actor.loss_scale_factor"),
])
def test_refusals_name_the_verl_key_to_change(objective: str, settings: dict[str, Any], key: str) -> None:
    ours = run_mode(f"composer_{objective}", fixed_case(**settings))
    assert isinstance(ours.error, ConfigError) and key in str(ours.error), ours


@pytest.mark.parametrize("info", [{"dp_size": 2, "micro_batch_tokens": 10}, {"dp_size": 0}],
                         ids=["unknown-key", "dp_size-0"])
def test_global_batch_info_verl_cannot_use_is_refused(info: dict[str, Any]) -> None:
    """An unknown key makes VeRL's agg_loss raise; dp_size=0 makes it return 0 silently. The twin refuses both."""
    case = fixed_case(global_batch_info=info)
    assert isinstance(run_mode("composer_ppo", case).error, ComposerError)
