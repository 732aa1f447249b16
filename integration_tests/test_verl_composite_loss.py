"""The composer loss as VeRL's engine calls it: `loss(model_output=, data=, dp_group=)` on a real nested
TensorDict micro-batch, and the logits-processor form `loss(student_logits=, data=)`.

With self-distillation off it must equal VeRL's own `ppo_loss` under the same ActorConfig (it is that loss,
with the composer objective). The distillation term placed by the logits processor must equal composer-core's
teacher-top-K divergence at the response positions, and a teacher pass must return the teacher's top-K.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch

pytest.importorskip("verl")
losses = pytest.importorskip("verl.workers.utils.losses")
padding = pytest.importorskip("verl.workers.utils.padding")
tensordict_utils = pytest.importorskip("verl.utils.tensordict_utils")

from verl_batches import (  # noqa: E402 - after the importorskip of verl
    TOL,
    GlobalInfo,
    PackedBatch,
    actor_config,
    make_batch,
    nested,
    packed_batch,
)

from composer_core.distill import distill_per_token, importance_weight, teacher_topk  # noqa: E402
from composer_core.errors import BatchError, ConfigError  # noqa: E402
from composer_core.loss import EmptyDistillMaskWarning  # noqa: E402
from composer_core.objectives import Normaliser, aggregate  # noqa: E402
from composer_verl.composite_loss import (  # noqa: E402
    DISTILL_MASK,
    DISTILL_OUTPUT,
    TEACHER_IDS,
    TEACHER_LOG_PROBS,
    TEACHER_PASS,
    ComposerActorLoss,
    topk_keys,
)
from composer_verl.teacher_pass import response_topk  # noqa: E402

pytestmark = pytest.mark.backend("verl")

PROMPTS = [3, 2, 5, 1, 4, 2, 3, 2]
VOCAB, TOP_K = 23, 5
INFO = GlobalInfo(dp_size=2, batch_num_tokens=150, global_batch_size=16)
SETTINGS = {"loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 16, "use_kl_loss": True,
            "kl_loss_type": "low_var_kl", "kl_loss_coef": 0.05}


def policy_group(objective: str, **extras: Any) -> dict[str, Any]:
    return {"policy": {"objective": {"name": objective, "params": extras}}}


def with_ref(packed: PackedBatch, seed: int) -> PackedBatch:
    """Add ref_log_prob (the KL loss reads it) as a response-aligned nested field."""
    lengths = packed.data["response_mask"].offsets().diff().tolist()
    ref = torch.randn(len(lengths), max(lengths), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    packed.data["ref_log_prob"] = nested([ref[i, :n] for i, n in enumerate(lengths)])
    return packed


def verl_loss(loss_mode: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    packed = with_ref(packed_batch(make_batch(seed), INFO, PROMPTS), seed)
    loss, metrics = losses.ppo_loss(actor_config(loss_mode, **SETTINGS), {"log_probs": packed.packed_log_prob},
                                    packed.data)
    (grad,) = torch.autograd.grad(loss, packed.log_prob)
    return loss.detach(), grad, metrics


def composer_loss(objective: str, group: dict[str, Any], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    packed = with_ref(packed_batch(make_batch(seed), INFO, PROMPTS), seed)
    loss_fn = ComposerActorLoss(actor_config(f"composer_{objective}", **SETTINGS), group)
    loss, metrics = loss_fn(model_output={"log_probs": packed.packed_log_prob}, data=packed.data, dp_group=None)
    (grad,) = torch.autograd.grad(loss, packed.log_prob)
    return loss.detach(), grad, metrics


# ---------------------------------------------------------------- channel 1: VeRL's actor loss


@pytest.mark.parametrize(("verl_mode", "objective"), [("vanilla", "dr_grpo"), ("gspo", "gspo"), ("cispo", "cispo")])
def test_policy_only_equals_verls_ppo_loss(verl_mode: str, objective: str) -> None:
    theirs, their_grad, their_metrics = verl_loss(verl_mode)
    ours, our_grad, our_metrics = composer_loss(objective, policy_group(objective))
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(our_grad, their_grad, **TOL)
    assert bool(their_grad.abs().sum() > 0)
    for name in ("actor/pg_loss", "kl_loss", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert our_metrics[name].aggregate() == pytest.approx(their_metrics[name].aggregate(), rel=1e-6, abs=1e-10)


def test_group_settings_reach_verls_actor_loss() -> None:
    """cispo without the lower clip (a setting VeRL has no key for) changes the loss; with the default it is VeRL's."""
    theirs, _, _ = verl_loss("cispo", seed=2)
    ours, _, _ = composer_loss("cispo", policy_group("cispo", lower_clip=False), seed=2)
    assert abs((ours - theirs).item()) > 1e-4


def test_the_loss_survives_the_trip_to_a_ray_worker() -> None:
    """Pickled after use (as Ray ships it), only plain settings travel: the worker rebuilds the rest itself."""
    loss_fn = ComposerActorLoss(actor_config("composer_cispo", **SETTINGS), policy_group("cispo", lower_clip=False))
    packed = with_ref(packed_batch(make_batch(3), INFO, PROMPTS), 3)
    expected, _ = loss_fn(model_output={"log_probs": packed.packed_log_prob}, data=packed.data)
    assert set(loss_fn.__getstate__()) == {"actor_config", "composer_settings", "empty_distill_events"}
    shipped = pickle.loads(pickle.dumps(loss_fn))
    value, _ = shipped(model_output={"log_probs": packed.packed_log_prob}, data=packed.data)
    torch.testing.assert_close(value, expected)


# ---------------------------------------------------------------- channel 2 through the logits processor


def distill_group(**distill: Any) -> dict[str, Any]:
    return {**policy_group("dr_grpo"), "distill": {"weight": 0.5, "support": "teacher_topk", "top_k": TOP_K,
                                                   "teacher": "live", **distill}}


def distill_batch(seed: int, targeted_rows: list[int]) -> tuple[PackedBatch, torch.Tensor, torch.Tensor]:
    """A packed batch with the teacher's top-K per response token and a distill mask on `targeted_rows`; returns
    it with the student's packed logits (1, total_nnz, V) and the teacher's response logits (rows, R, V)."""
    batch = make_batch(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    rows, length = batch.mask.shape
    teacher_logits = torch.randn(rows, length, VOCAB, generator=gen, dtype=torch.float64)
    ids, log_probs = teacher_topk(teacher_logits, TOP_K)
    targeted = torch.zeros(rows, length, dtype=torch.long)
    targeted[targeted_rows] = 1
    packed = with_ref(packed_batch(batch, INFO, PROMPTS, **{TEACHER_IDS: ids, TEACHER_LOG_PROBS: log_probs,
                                                            DISTILL_MASK: targeted}), seed)
    total = packed.data["input_ids"].values().shape[0]
    student = torch.randn(1, total, VOCAB, generator=gen, dtype=torch.float64, requires_grad=True)
    return packed, student, teacher_logits


def engine_model_output(packed: PackedBatch, processed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What VeRL's engine stores: each (1, total_nnz) processor output as a nested tensor over the samples."""
    offsets = packed.data["input_ids"].offsets()
    output = {key: torch.nested.nested_tensor_from_jagged(value.squeeze(0), offsets)
              for key, value in processed.items()}
    return {"log_probs": packed.packed_log_prob, **output}


def test_logits_processor_places_the_teacher_at_the_response_positions() -> None:
    packed, student, teacher_logits = distill_batch(seed=4, targeted_rows=[0, 2, 5])
    loss_fn = ComposerActorLoss(actor_config("composer_dr_grpo", **SETTINGS), distill_group(alpha=0.3))
    processed = loss_fn(student_logits=student, data=packed.data)
    assert set(processed) == {DISTILL_OUTPUT} and processed[DISTILL_OUTPUT].shape == student.shape[:2]
    ours = padding.no_padding_2_padding(processed[DISTILL_OUTPUT][0], packed.data)
    student_at_response = padding.no_padding_2_padding(student[0], packed.data)
    expected = distill_per_token(student_at_response, teacher_logits[:, : ours.shape[1]], support="teacher_topk",
                                 top_k=TOP_K, alpha=0.3)
    mask = make_batch(4).mask
    torch.testing.assert_close(ours[mask], expected[mask], **TOL)


@pytest.mark.parametrize("is_clip", [None, 2.0])
def test_full_loss_adds_the_weighted_distillation_term(is_clip: float | None) -> None:
    packed, student, _ = distill_batch(seed=5, targeted_rows=[1, 3])
    actor = actor_config("composer_dr_grpo", **SETTINGS)
    loss_fn = ComposerActorLoss(actor, distill_group(is_clip=is_clip))
    output = engine_model_output(packed, loss_fn(student_logits=student, data=packed.data))
    total, metrics = loss_fn(model_output=output, data=packed.data, dp_group=None)
    policy, _ = losses.ppo_loss(actor_config("composer_dr_grpo", **SETTINGS), {"log_probs": packed.packed_log_prob},
                                packed.data)
    per_token = padding.no_padding_2_padding(output[DISTILL_OUTPUT], packed.data)
    mask = make_batch(5).mask.clone()
    mask[[0, 2, 4, 5, 6, 7]] = False
    if is_clip is not None:
        per_token = per_token * importance_weight(packed.log_prob, make_batch(5).old_log_prob, is_clip)
    distill = aggregate(per_token, mask, "token-mean", Normaliser(num_tokens=INFO.batch_num_tokens, scale=INFO.dp_size))
    torch.testing.assert_close(total, policy + 0.5 * distill, **TOL)
    assert metrics["distill/tokens"].aggregate() == float(mask.sum())
    (grad,) = torch.autograd.grad(total, student)
    touched = grad.abs().sum(-1)[0] > 0
    positions = padding.no_padding_2_padding(torch.arange(student.shape[1]), packed.data)
    assert set(touched.nonzero().flatten().tolist()) == set(positions[mask].tolist())


def test_an_untargeted_micro_batch_is_a_reported_event() -> None:
    packed, student, _ = distill_batch(seed=6, targeted_rows=[])
    loss_fn = ComposerActorLoss(actor_config("composer_dr_grpo", **SETTINGS), distill_group())
    output = engine_model_output(packed, loss_fn(student_logits=student, data=packed.data))
    with pytest.warns(EmptyDistillMaskWarning):
        total, metrics = loss_fn(model_output=output, data=packed.data)
    assert metrics["distill/tokens"].aggregate() == 0.0
    assert loss_fn.empty_distill_events == 1
    assert torch.isfinite(total)


def test_missing_teacher_tensors_name_the_trainer() -> None:
    packed = with_ref(packed_batch(make_batch(7), INFO, PROMPTS), 7)
    total = packed.data["input_ids"].values().shape[0]
    loss_fn = ComposerActorLoss(actor_config("composer_dr_grpo", **SETTINGS), distill_group())
    with pytest.raises(BatchError, match="trainer_mode=composer"):
        loss_fn(student_logits=torch.randn(1, total, VOCAB), data=packed.data)


def test_full_support_is_refused_with_a_precomputed_teacher() -> None:
    packed, student, _ = distill_batch(seed=8, targeted_rows=[0])
    loss_fn = ComposerActorLoss(actor_config("composer_dr_grpo", **SETTINGS), distill_group(support="full"))
    with pytest.raises(ConfigError, match="full logits"):
        loss_fn(student_logits=student, data=packed.data)


# ---------------------------------------------------------------- the teacher pass


def test_teacher_pass_returns_the_teacher_topk_at_the_response_positions() -> None:
    """The forward on teacher rows returns 2K per-position keys; read back per response token they are the
    teacher's top-K, and a zero loss (the pass is forward-only)."""
    packed = packed_batch(make_batch(9), INFO, PROMPTS)
    tensordict_utils.assign_non_tensor(packed.data, **{TEACHER_PASS: True})
    total = packed.data["input_ids"].values().shape[0]
    logits = torch.randn(1, total, VOCAB, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    loss_fn = ComposerActorLoss(actor_config("composer_dr_grpo", **SETTINGS), distill_group())
    processed = loss_fn(student_logits=logits, data=packed.data)
    id_keys, value_keys = topk_keys(TOP_K)
    assert set(processed) == {*id_keys, *value_keys}
    output = tensordict_utils.get_tensordict(engine_model_output(packed, processed))
    ids, log_probs = response_topk(output, packed.data["response_mask"], TOP_K)
    expected_ids, expected_values = teacher_topk(padding.no_padding_2_padding(logits[0], packed.data), TOP_K)
    mask = make_batch(9).mask
    torch.testing.assert_close(ids.to_padded_tensor(0)[mask], expected_ids[mask])
    torch.testing.assert_close(log_probs.to_padded_tensor(0.0)[mask], expected_values.float()[mask])
    value, metrics = loss_fn(model_output=output, data=packed.data)
    assert float(value) == 0.0 and metrics == {}


# ---------------------------------------------------------------- against VeRL's own top-K distillation


def test_forward_kl_topk_equals_verls_own_distillation_loss() -> None:
    """VeRL's on-policy distillation (`compute_forward_kl_topk`, FSDP) is the forward KL over the teacher's
    top-K with no tail: ours with alpha 0, teacher_topk, tail none, on the same packed tensors."""
    verl_distill = pytest.importorskip("verl.trainer.distillation.fsdp.losses")
    verl_config = pytest.importorskip("verl.workers.config")
    from composer_core.distill import distill_per_token_precomputed

    gen = torch.Generator().manual_seed(11)
    student = torch.randn(1, 40, VOCAB, generator=gen, dtype=torch.float64, requires_grad=True)
    ids, log_probs = teacher_topk(torch.randn(1, 40, VOCAB, generator=gen, dtype=torch.float64), TOP_K)
    offsets = torch.tensor([0, 15, 40])
    config = verl_config.DistillationConfig(
        distillation_loss=verl_config.DistillationLossConfig(log_prob_min_clamp=None))
    theirs = verl_distill.compute_forward_kl_topk(
        student_logits=student, teacher_topk_log_probs=torch.nested.nested_tensor_from_jagged(log_probs[0], offsets),
        teacher_topk_ids=torch.nested.nested_tensor_from_jagged(ids[0], offsets), config=config,
        data_format="thd")["distillation_losses"]
    ours = distill_per_token_precomputed(student, ids, log_probs, alpha=0.0, tail="none")
    # VeRL computes the KL in float32 whatever the input dtype
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-6)
    (their_grad,) = torch.autograd.grad(theirs.sum(), student)
    (our_grad,) = torch.autograd.grad(ours.sum(), student)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-6)
    assert bool(theirs.abs().sum() > 0)
