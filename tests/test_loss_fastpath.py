"""The policy channel's fast path: padding zeroed by multiplication, checks and metrics read from the device
together. Its numbers must be those of the plain formulas (a select, then `masked_mean` per metric), its errors
the same, and a clean batch must be read from the device a fixed number of times, not once per metric."""

from dataclasses import replace

import pytest
import torch
from batches import random_policy_tensors

from composer_core import BatchError, ComposerConfig, ComposerLoss, PolicyInputs
from composer_core.config import ResolvedObjective
from composer_core.errors import NonFiniteError
from composer_core.objectives.aggregation import Normaliser, aggregate, masked_mean
from composer_core.objectives.base import PolicyBatch, TokenLoss
from composer_core.objectives.kl import kl_estimate
from composer_core.plugins import registries


def composer(**policy: object) -> ComposerLoss:
    return ComposerLoss(ComposerConfig.from_mapping({"policy": policy}))


def full_inputs(seed: int = 3, dtype: torch.dtype = torch.float64, per_sequence: bool = False) -> PolicyInputs:
    tensors = random_policy_tensors(seed=seed, dtype=dtype)
    mask = tensors["mask"]
    generator = torch.Generator().manual_seed(seed + 100)
    advantages = tensors["advantages"][:, 0] if per_sequence else tensors["advantages"]
    return PolicyInputs(tensors["log_prob"], advantages, mask, old_log_prob=tensors["old_log_prob"],
                        ref_log_prob=tensors["old_log_prob"] - 0.2,
                        rollout_weights=0.5 + torch.rand(mask.shape, generator=generator, dtype=dtype))


def reference(loss: ComposerLoss, inputs: PolicyInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy channel written plainly: every input selected inside the mask, one `masked_mean` per metric."""
    mask, settings, resolved = inputs.mask, loss.config.policy, loss.objective
    advantages = inputs.advantages
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand(mask.shape)

    def inside(values: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, values, torch.zeros((), dtype=values.dtype))

    log_prob, old, advantages = inside(inputs.log_prob), inside(inputs.old_log_prob), inside(advantages)
    token = resolved.objective.per_token(PolicyBatch(log_prob, old, advantages, mask), resolved.params)
    per_token = token.loss * inside(inputs.rollout_weights)
    metrics = {f"policy/{name}": masked_mean(stat, mask).item() for name, stat in token.stats.items()}
    metrics["policy/entropy_estimate"] = masked_mean(-log_prob.detach(), mask).item()
    kl = settings.kl
    if kl.coef > 0:
        per_token_kl = kl_estimate(log_prob, inside(inputs.ref_log_prob), kl.estimator)
        metrics["policy/kl"] = masked_mean(per_token_kl.detach(), mask).item()
        per_token = per_token + kl.coef * per_token_kl
    value = aggregate(per_token, mask, resolved.aggregation, Normaliser())
    metrics.update({"policy/loss": value.item(), "policy/tokens": float(mask.sum()),
                    "policy/advantage_mean": masked_mean(advantages, mask).item()})
    return value, metrics


@pytest.mark.parametrize("per_sequence", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_gradient_and_metrics_are_the_plain_formulas(dtype: torch.dtype, per_sequence: bool) -> None:
    for name in registries().objectives.names():
        loss = composer(objective={"name": name}, kl={"coef": 0.1})
        inputs = full_inputs(dtype=dtype, per_sequence=per_sequence)
        value, metrics = loss.policy_loss(inputs)
        expected_value, expected_metrics = reference(loss, inputs)
        torch.testing.assert_close(value, expected_value, msg=name)
        (grad,) = torch.autograd.grad(value, inputs.log_prob)
        (expected_grad,) = torch.autograd.grad(expected_value, inputs.log_prob)
        torch.testing.assert_close(grad, expected_grad, msg=name)
        assert metrics.keys() == expected_metrics.keys(), name
        for key, expected in expected_metrics.items():  # means now divide in double: float32 stats differ by ~1e-8
            assert metrics[key] == pytest.approx(expected, rel=1e-6, abs=1e-9), f"{name} {key}"


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30, -1e30])
def test_padding_never_changes_values_gradients_or_metrics(fill: float) -> None:
    for name in registries().objectives.names():
        loss = composer(objective={"name": name}, kl={"coef": 0.1})
        clean = full_inputs(seed=5)
        outside = ~clean.mask
        dirty = replace(clean, log_prob=clean.log_prob.detach().masked_fill(outside, fill).requires_grad_(),
                        **{field: getattr(clean, field).masked_fill(outside, fill)
                           for field in ("old_log_prob", "advantages", "ref_log_prob", "rollout_weights")})
        results = []
        for inputs in (clean, dirty):
            value, metrics = loss.policy_loss(inputs)
            results.append((value, torch.autograd.grad(value, inputs.log_prob)[0], metrics))
        (clean_value, clean_grad, clean_metrics), (dirty_value, dirty_grad, dirty_metrics) = results
        torch.testing.assert_close(dirty_value, clean_value, msg=name)
        torch.testing.assert_close(dirty_grad, clean_grad, msg=name)
        assert dirty_grad[outside].abs().sum() == 0, name
        assert dirty_metrics == pytest.approx(clean_metrics), name


class DeviceReads:
    """Counts the calls that copy a tensor's value to the host (each one a device sync on a GPU)."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for method in self.METHODS:
            monkeypatch.setattr(torch.Tensor, method, self._counted(getattr(torch.Tensor, method)))

    def _counted(self, original):
        def counted(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return counted


@pytest.mark.parametrize("name", ["ppo", "grpo", "gspo", "cispo"])
def test_a_clean_batch_is_read_from_the_device_three_times(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loss = composer(objective={"name": name}, kl={"coef": 0.1})
    inputs = full_inputs()
    reads = DeviceReads(monkeypatch)
    out = loss(policy=inputs)
    # the checks and sums, the token counts, the total: not one read per metric or per check
    assert reads.count == 3
    assert len(out.metrics) > reads.count


def test_errors_still_name_what_is_wrong() -> None:
    inputs = full_inputs()
    bad_ref = inputs.ref_log_prob.clone()
    bad_ref[1, 0] = float("-inf")
    with pytest.raises(NonFiniteError, match=r"ref_log_prob holds a non-finite value \(-inf\) at position \(1, 0\)"):
        composer(kl={"coef": 0.1})(policy=replace(inputs, ref_log_prob=bad_ref))
    bad_weights = inputs.rollout_weights.clone()
    bad_weights[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"rollout_weights holds a non-finite value \(nan\) at position \(0, 0\)"):
        composer()(policy=replace(inputs, rollout_weights=bad_weights))
    with pytest.raises(BatchError, match=r"ref_log_prob has shape \(6, 8\) but policy mask has shape \(6, 9\)"):
        composer()(policy=replace(inputs, ref_log_prob=torch.zeros(6, 8, dtype=torch.float64)))
    with pytest.raises(BatchError, match="policy mask must hold only 0 and 1.*0.5"):
        composer()(policy=replace(inputs, mask=inputs.mask.double() * 0.5))
    with pytest.raises(BatchError, match="policy mask must hold only 0 and 1.*nan"):
        composer()(policy=replace(inputs, mask=inputs.mask.double().masked_fill(~inputs.mask, float("nan"))))


def test_a_non_finite_advantage_of_an_empty_row_is_still_refused() -> None:
    inputs = full_inputs(per_sequence=True)
    mask = inputs.mask.clone()
    mask[2] = False
    advantages = inputs.advantages.clone()
    advantages[2] = float("inf")
    lenient = composer(allow_empty_rows=True)
    with pytest.raises(NonFiniteError, match="advantages holds a non-finite value"):
        lenient(policy=replace(inputs, mask=mask, advantages=advantages))
    assert torch.isfinite(lenient(policy=replace(inputs, mask=mask)).loss)
    with pytest.raises(BatchError, match=r"rows with no tokens: \[2\]"):
        composer()(policy=replace(inputs, mask=mask))


def test_a_non_finite_loss_from_finite_inputs_is_refused() -> None:
    inputs = full_inputs()
    far = replace(inputs, old_log_prob=inputs.old_log_prob - 1000.0)  # ratio e^1000: inf without a clamp
    with pytest.raises(NonFiniteError, match="the policy loss is inf"):
        composer(objective={"name": "bnpo", "params": {"log_ratio_clamp": None}})(policy=far)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_numeric_masks_give_the_bool_masks_numbers(dtype: torch.dtype) -> None:
    inputs = full_inputs()
    expected = composer()(policy=inputs)
    numeric = composer()(policy=replace(inputs, mask=inputs.mask.to(dtype)))
    torch.testing.assert_close(numeric.loss, expected.loss)
    assert numeric.metrics == expected.metrics


def test_a_statistic_non_finite_on_padding_only_is_read_over_the_mask() -> None:
    """A plugin statistic may be NaN where the zeroed inputs make it undefined (here 0 / 0 on padding): the fast
    sum multiplies by the mask and reads NaN, so that mean is taken again over the mask."""
    loss = composer(objective={"name": "reinforce"})
    base = loss.objective.objective

    def with_ratio_stat(batch: PolicyBatch, params: object) -> TokenLoss:
        token = base.per_token(batch, params)
        return TokenLoss(token.loss, {"old_over_new": (batch.old_log_prob / batch.log_prob).detach()})

    loss.objective = ResolvedObjective(replace(base, per_token=with_ratio_stat), loss.objective.params,
                                       loss.objective.aggregation, loss.objective.normaliser)
    inputs = full_inputs()
    _, metrics = loss.policy_loss(inputs)
    expected = masked_mean((inputs.old_log_prob / inputs.log_prob).detach(), inputs.mask).item()
    assert metrics["policy/old_over_new"] == pytest.approx(expected)
