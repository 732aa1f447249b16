"""Parity with TRL 1.16's own code: the same inputs through TRL and through composer-core give the same loss
values and the same gradients.

Covered: SDPO's pure loss utilities and SDPOTrainer's aggregation, GKD's generalized JSD, every GRPO loss type
through a real GRPOTrainer on a tiny local model, and DPO losses through a real DPOTrainer. Where one of our
defaults deliberately differs from TRL's, the test asserts the difference and the setting that removes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("trl")

from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

from composer_core import ComposerConfig, ComposerLoss, ConfigError, DistillInputs, Normaliser, PolicyInputs
from composer_core.distill import add_tail_bucket, distill_per_token, importance_weight
from composer_core.objectives import aggregate, kl_estimate
from composer_core.preference import PreferenceBatch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental announces itself as unstable on import
    from trl.experimental.gkd import GKDTrainer
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer
    from trl.experimental.sdpo import loss_utils as sdpo
    from trl.experimental.sdpo.sdpo_trainer import DistillationLogits

pytestmark = pytest.mark.backend("trl")

VOCAB = 40
TOP_K = 7
GRADIENT_ACCUMULATION = 2
MAX_COMPLETION = 8  # larger than the padded completions, so Dr.GRPO's constant length is visible
NUM_GENERATIONS = 2
COMPLETION_LENGTHS = (6, 3, 5, 2)
PROMPTS = ("what is two plus two", "solve one add one", "how to fix the error", "which file to read")
Grads = dict[str, torch.Tensor]


def random_logits(seed: int, batch: int = 3, length: int = 5, vocab: int = VOCAB) -> torch.Tensor:
    """Float64 logits spread widely enough that top-K supports hold clearly less than all the mass."""
    generator = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)


def random_weights(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Positive per-token weights, so the gradient of a weighted sum mixes every token differently."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def right_padded_mask(lengths: tuple[int, ...], width: int) -> torch.Tensor:
    """A (len(lengths), width) 0/1 mask whose row i has its first lengths[i] entries set."""
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def per_token_and_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor,
                       weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token loss of `loss_fn(student)` and the gradient of its weighted sum w.r.t. the student logits."""
    student = logits.clone().requires_grad_()
    per_token = loss_fn(student)
    (per_token * weights).sum().backward()
    return per_token.detach(), student.grad


def scalar_and_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor],
                    logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A scalar loss of `loss_fn(student)` and its gradient w.r.t. the student logits."""
    student = logits.clone().requires_grad_()
    loss = loss_fn(student)
    loss.backward()
    return loss.detach(), student.grad


# ---------------------------------------------------------------- SDPO pure loss utilities (channel 2)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_full_vocabulary_divergence_matches_sdpo(alpha: float) -> None:
    student, teacher = random_logits(0), random_logits(1)
    weights = random_weights(2, student.shape[:-1])
    expected = per_token_and_grad(
        lambda s: sdpo.compute_full_logit_self_distillation_loss(s, teacher, distillation_alpha=alpha),
        student, weights)
    actual = per_token_and_grad(lambda s: distill_per_token(s, teacher, support="full", alpha=alpha), student, weights)
    assert_close(actual, expected)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize(("add_tail", "tail"), [(True, "bucket"), (False, "renormalise")])
def test_student_topk_divergence_matches_sdpo(alpha: float, add_tail: bool, tail: str) -> None:
    student, teacher = random_logits(3), random_logits(4)
    weights = random_weights(5, student.shape[:-1])
    captured = torch.softmax(student, -1).topk(TOP_K, -1).values.sum(-1)
    assert bool((captured < 0.99).all()), "the top-K must leave a tail for the tail handling to matter"
    expected = per_token_and_grad(
        lambda s: sdpo.compute_topk_self_distillation_loss(s, teacher, distillation_topk=TOP_K,
                                                           distillation_alpha=alpha, distillation_add_tail=add_tail),
        student, weights)
    actual = per_token_and_grad(
        lambda s: distill_per_token(s, teacher, support="student_topk", top_k=TOP_K, tail=tail, alpha=alpha),
        student, weights)
    assert_close(actual, expected)


def test_sampled_token_loss_matches_sdpo() -> None:
    student, teacher = random_logits(6), random_logits(7)
    weights = random_weights(8, student.shape[:-1])
    token_ids = torch.randint(0, VOCAB, student.shape[:-1], generator=torch.Generator().manual_seed(9))
    expected = per_token_and_grad(
        lambda s: sdpo.compute_sampled_token_self_distillation_loss(s, teacher, token_ids, distillation_alpha=1.0),
        student, weights)
    actual = per_token_and_grad(
        lambda s: distill_per_token(s, teacher, support="sampled_token", alpha=1.0, token_ids=token_ids),
        student, weights)
    assert_close(actual, expected)


def test_sampled_token_refuses_alpha_other_than_one_like_sdpo() -> None:
    student, teacher = random_logits(10), random_logits(11)
    token_ids = torch.zeros(student.shape[:-1], dtype=torch.long)
    with pytest.raises(ValueError, match="alpha=1.0"):
        sdpo.compute_sampled_token_self_distillation_loss(student, teacher, token_ids, distillation_alpha=0.5)
    with pytest.raises(ConfigError, match=r"set alpha=1\.0"):
        distill_per_token(student, teacher, support="sampled_token", alpha=0.5, token_ids=token_ids)
    with pytest.raises(ConfigError, match=r"set alpha to 1\.0"):
        ComposerConfig.from_mapping({"distill": {"weight": 1.0, "support": "sampled_token", "alpha": 0.5}})


def test_tail_bucket_matches_sdpo_including_a_full_top_k() -> None:
    logits = random_logits(12, batch=2, length=3)
    logits[0, 0, 0] = 80.0  # one token holds all the mass: the captured mass rounds to 1, the clamp keeps it finite
    top = torch.log_softmax(logits, -1).topk(TOP_K, -1).values
    assert float(torch.logsumexp(top[0, 0], -1)) > -1e-7, "this row must reach the clamp"
    weights = random_weights(13, (*top.shape[:-1], TOP_K + 1))

    def bucket_grad(fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = top.clone().requires_grad_()
        with_tail = fn(log_probs)
        (with_tail * weights).sum().backward()
        return with_tail.detach(), log_probs.grad

    expected, actual = bucket_grad(sdpo.add_tail_bucket), bucket_grad(add_tail_bucket)
    assert bool(torch.isfinite(actual[0]).all())
    assert_close(actual, expected)


def test_importance_sampling_correction_matches_sdpo() -> None:
    generator = torch.Generator().manual_seed(14)
    old = -3 * torch.rand(4, 6, generator=generator, dtype=torch.float64)
    log_ratio = torch.linspace(-25.0, 25.0, 24, dtype=torch.float64).reshape(4, 6)  # beyond the +-20 clamp
    student = (old + log_ratio).requires_grad_()
    is_clip = 2.0
    assert bool((log_ratio < -20).any()) and bool((log_ratio.exp() > is_clip).any())

    def corrected(apply: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        per_token = torch.rand(4, 6, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
        per_token.requires_grad_()
        value = apply(per_token)
        value.sum().backward()
        return value.detach(), per_token.grad

    expected = corrected(lambda loss: sdpo.apply_importance_sampling_clipping(loss, student, old, is_clip))
    actual = corrected(lambda loss: loss * importance_weight(student, old, is_clip))
    assert_close(actual, expected, rtol=1e-12, atol=0.0)  # relative: exp(-20) vs exp(-25) must be told apart
    assert student.grad is None, "the importance weight is stopped: no gradient through it"


@pytest.mark.parametrize("support", ["full", "student_topk", "sampled_token"])
def test_teacher_never_receives_a_gradient(support: str) -> None:
    student = random_logits(16).requires_grad_()
    teacher = random_logits(17).requires_grad_()
    token_ids = torch.zeros(student.shape[:-1], dtype=torch.long)
    alpha = 1.0 if support == "sampled_token" else 0.5
    distill_per_token(student, teacher, support=support, alpha=alpha, top_k=TOP_K, token_ids=token_ids).sum().backward()
    assert student.grad is not None and bool(student.grad.abs().sum() > 0)
    assert teacher.grad is None


# ---------------------------------------------------------------- SDPOTrainer's aggregation (channel 2 end to end)


@pytest.fixture(scope="module")
def make_sdpo(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
              tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SDPOTrainer]:
    """Build a real SDPOTrainer on the tiny model with the given SDPOConfig settings."""
    output_dir = tmp_path_factory.mktemp("sdpo")
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": text}] for text in PROMPTS]})

    def make(**settings: Any) -> SDPOTrainer:
        args = SDPOConfig(output_dir=str(output_dir), bf16=False, use_cpu=True, report_to="none",
                          max_completion_length=MAX_COMPLETION, num_generations=NUM_GENERATIONS,
                          per_device_train_batch_size=len(PROMPTS), **settings)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
        return SDPOTrainer(model=model, reward_funcs=zero_reward, args=args, train_dataset=dataset,
                           processing_class=tiny_tokenizer)

    return make


SDPO_MODES = {
    "topk_logits": ({"distillation_mode": "topk_logits", "distillation_topk": TOP_K, "distillation_add_tail": True,
                     "distillation_alpha": 0.5}, {"support": "student_topk", "top_k": TOP_K, "tail": "bucket",
                                                  "alpha": 0.5}),
    "full_logits": ({"distillation_mode": "full_logits", "distillation_alpha": 0.3}, {"support": "full", "alpha": 0.3}),
    "sampled_token": ({"distillation_mode": "sampled_token", "distillation_alpha": 1.0},
                      {"support": "sampled_token", "alpha": 1.0}),
}


@pytest.mark.parametrize("mode", list(SDPO_MODES))
def test_distill_channel_matches_sdpo_trainer(make_sdpo: Callable[..., SDPOTrainer], mode: str) -> None:
    """SDPOTrainer averages per-row token means over ALL rows, rows with an empty SD mask included: our
    seq-mean-token-mean with the row count passed as the global num_sequences. Our local default counts only the
    targeted rows (a documented choice), which the last assertion pins down."""
    trl_settings, ours = SDPO_MODES[mode]
    trainer = make_sdpo(distillation_is_clip=2.0, **trl_settings)
    student, teacher = random_logits(18, batch=4, length=6), random_logits(19, batch=4, length=6)
    token_ids = torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(20))
    completion_mask = right_padded_mask((6, 4, 5, 3), 6)
    loss_mask = completion_mask.clone()
    loss_mask[1] = 0  # no demonstration or feedback for this sample: not distilled
    token_log_prob = torch.log_softmax(student, -1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    old = token_log_prob + 0.8 * torch.randn(4, 6, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    assert bool(((token_log_prob - old).exp() > 2.0)[loss_mask.bool()].any()), "the IS cap must bind somewhere"

    def trl_loss(s: torch.Tensor) -> torch.Tensor:
        logits = DistillationLogits(completion_ids=token_ids, completion_mask=completion_mask, loss_mask=loss_mask,
                                    student_logits=s, teacher_logits=teacher)
        return trainer._compute_self_distillation_loss(trainer.model, {"old_per_token_logps": old}, logits)

    def composer_loss(normaliser: Normaliser) -> Callable[[torch.Tensor], torch.Tensor]:
        config = ComposerConfig.from_mapping({"policy": {"weight": 0.0}, "distill": {
            "weight": 1.0, "is_clip": 2.0, "aggregation": "seq-mean-token-mean", "normaliser": "global", **ours}})
        loss = ComposerLoss(config)
        return lambda s: loss(distill=DistillInputs(s, teacher, loss_mask, token_ids=token_ids, old_log_prob=old),
                              distill_normaliser=normaliser).loss

    expected = scalar_and_grad(trl_loss, student)
    assert_close(scalar_and_grad(composer_loss(Normaliser(num_sequences=4)), student), expected)
    targeted_rows = int(loss_mask.any(-1).sum())
    local_value, _ = scalar_and_grad(composer_loss(Normaliser()), student)
    assert_close(local_value, expected[0] * 4 / targeted_rows)


# ---------------------------------------------------------------- GKD generalized JSD


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("reduction", ["sum", "batchmean", "num_items_in_batch"])
def test_generalized_jsd_matches_gkd(beta: float, reduction: str) -> None:
    temperature = 0.7
    student, teacher = random_logits(22, batch=3, length=6), random_logits(23, batch=3, length=6)
    mask = right_padded_mask((6, 2, 4), 6).bool()
    labels = torch.where(mask, 5, -100)
    num_items = 20  # a global token count larger than this batch's 12
    trl_kwargs = ({"reduction": "batchmean", "num_items_in_batch": torch.tensor(num_items)}
                  if reduction == "num_items_in_batch" else {"reduction": reduction})
    mode, normaliser = {"sum": ("token-sum", Normaliser()), "batchmean": ("token-mean", Normaliser()),
                        "num_items_in_batch": ("token-mean", Normaliser(num_tokens=num_items))}[reduction]
    expected = scalar_and_grad(lambda s: GKDTrainer.generalized_jsd_loss(
        s, teacher, labels=labels, beta=beta, temperature=temperature, **trl_kwargs), student)
    actual = scalar_and_grad(lambda s: aggregate(
        distill_per_token(s, teacher, support="full", alpha=beta, temperature=temperature), mask, mode, normaliser),
        student)
    assert_close(actual, expected)


# ---------------------------------------------------------------- GRPOTrainer loss types (channel 1)


def zero_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A reward function for trainers that never generate here."""
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def make_grpo(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
              tmp_path_factory: pytest.TempPathFactory) -> Callable[..., GRPOTrainer]:
    """Build a real GRPOTrainer on the tiny model with the given GRPOConfig settings, in train mode."""
    output_dir = tmp_path_factory.mktemp("grpo")
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": text}] for text in PROMPTS]})

    def make(**settings: Any) -> GRPOTrainer:
        args = GRPOConfig(output_dir=str(output_dir), bf16=False, use_cpu=True, report_to="none",
                          max_completion_length=MAX_COMPLETION, num_generations=NUM_GENERATIONS,
                          per_device_train_batch_size=len(PROMPTS), gradient_accumulation_steps=GRADIENT_ACCUMULATION,
                          **settings)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
        trainer = GRPOTrainer(model=model, reward_funcs=zero_reward, args=args, train_dataset=dataset,
                              processing_class=tiny_tokenizer)
        trainer.current_gradient_accumulation_steps = GRADIENT_ACCUMULATION  # set by Trainer's loop per window
        return trainer

    return make


@pytest.fixture(scope="module")
def rollout(tiny_tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Left-padded prompts, right-padded random completions of varying length and per-sequence advantages."""
    prompts = tiny_tokenizer([tiny_tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                                 add_generation_prompt=True) for text in PROMPTS],
                             padding=True, padding_side="left", return_tensors="pt")
    generator = torch.Generator().manual_seed(24)
    completion_mask = right_padded_mask(COMPLETION_LENGTHS, max(COMPLETION_LENGTHS))
    words = torch.randint(8, len(tiny_tokenizer), completion_mask.shape, generator=generator)
    return {"prompt_ids": prompts["input_ids"], "prompt_mask": prompts["attention_mask"],
            "completion_ids": torch.where(completion_mask.bool(), words, tiny_tokenizer.pad_token_id),
            "completion_mask": completion_mask, "advantages": torch.tensor([1.3, -0.7, 0.9, -1.1])}


def trl_log_probs(trainer: GRPOTrainer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token completion log-probs from TRL's own forward, so both sides see identical numbers."""
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    log_probs, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask,
                                                                 inputs["completion_ids"].size(1))
    return log_probs


def grpo_inputs(trainer: GRPOTrainer, rollout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch dict TRL's `_compute_loss` reads: behaviour log-probs moved off the current policy (ratios
    spread around 1), reference log-probs, and a global token count above this micro-batch's."""
    with torch.no_grad():
        current = trl_log_probs(trainer, rollout)
    generator = torch.Generator().manual_seed(25)
    extra_tokens = 7  # the other micro-batch of the accumulation window
    return {**rollout, "old_per_token_logps": current + 0.35 * torch.randn(current.shape, generator=generator),
            "ref_per_token_logps": current + 0.5 * torch.randn(current.shape, generator=generator),
            "num_items_in_batch": rollout["completion_mask"].sum() + extra_tokens}


def trl_normaliser(trainer: GRPOTrainer, inputs: dict[str, torch.Tensor]) -> Normaliser:
    """The denominators of TRL's loss_type in train mode: dapo/cispo divide by the window's share of
    `num_items_in_batch`; the others divide by the accumulation steps (and dr_grpo by max_completion_length)."""
    steps = trainer.current_gradient_accumulation_steps
    if trainer.loss_type in ("dapo", "cispo"):
        tokens = (inputs["num_items_in_batch"] / trainer.accelerator.num_processes
                  * steps / trainer.args.steps_per_generation)
        return Normaliser(num_tokens=tokens)
    return Normaliser(max_length=trainer.max_completion_length, scale=1.0 / steps)


def parameter_grads(model: torch.nn.Module) -> Grads:
    """Copies of the gradients the last backward left on the model's parameters."""
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def trl_loss_and_grads(trainer: GRPOTrainer, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Grads]:
    """TRL's own compute_loss on the batch, and the model's parameter gradients."""
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), parameter_grads(trainer.model)


def composer_loss_and_grads(trainer: GRPOTrainer, inputs: dict[str, torch.Tensor], policy: dict[str, Any],
                            normaliser: Normaliser) -> tuple[torch.Tensor, Grads, dict[str, float]]:
    """ComposerLoss on TRL's per-token log-probs of the same batch, its parameter gradients and metrics."""
    trainer.model.zero_grad(set_to_none=True)
    log_prob = trl_log_probs(trainer, inputs)
    output = ComposerLoss(ComposerConfig.from_mapping({"policy": policy}))(
        policy=PolicyInputs(log_prob, inputs["advantages"], inputs["completion_mask"],
                            old_log_prob=inputs["old_per_token_logps"], ref_log_prob=inputs["ref_per_token_logps"]),
        normaliser=normaliser)
    output.loss.backward()
    return output.loss.detach(), parameter_grads(trainer.model), output.metrics


NO_CLAMP = {"log_ratio_clamp": None}  # TRL exponentiates the raw log-ratio
CISPO_CAP = 1.2  # TRL's epsilon_high for cispo is the absolute cap of the ratio (5.0 recommended; lower to bind here)
GRPO_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "grpo": ({"loss_type": "grpo"}, {"objective": {"name": "grpo", "params": NO_CLAMP}}),
    "bnpo": ({"loss_type": "bnpo"}, {"objective": {"name": "bnpo", "params": NO_CLAMP}}),
    "dr_grpo": ({"loss_type": "dr_grpo"}, {"objective": {"name": "dr_grpo", "params": NO_CLAMP}}),
    "dapo": ({"loss_type": "dapo", "epsilon_high": 0.28}, {"objective": {"name": "dapo", "params": NO_CLAMP}}),
    "cispo": ({"loss_type": "cispo", "epsilon_high": CISPO_CAP},
              {"objective": {"name": "cispo", "params": {"clip_ratio_high": CISPO_CAP - 1, "lower_clip": False,
                                                         **NO_CLAMP}}}),
    "sapo": ({"loss_type": "sapo"}, {"objective": {"name": "sapo", "params": NO_CLAMP}}),
    "gspo": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4},
             {"objective": {"name": "gspo", "params": {"log_ratio_max": None}}}),
    "gspo_token_mean": ({"loss_type": "dapo", "importance_sampling_level": "sequence", "epsilon": 3e-4,
                         "epsilon_high": 4e-4},
                        {"objective": {"name": "gspo", "aggregation": "token-mean",
                                       "params": {"log_ratio_max": None}}}),
    "grpo_k3_kl": ({"loss_type": "grpo", "beta": 0.05, "use_bias_correction_kl": False},
                   {"objective": {"name": "grpo", "params": NO_CLAMP}, "kl": {"coef": 0.05, "estimator": "k3"}}),
    "dapo_k3_kl": ({"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.05, "use_bias_correction_kl": False},
                   {"objective": {"name": "dapo", "params": NO_CLAMP}, "kl": {"coef": 0.05, "estimator": "k3"}}),
}


@pytest.mark.parametrize("case", list(GRPO_CASES))
def test_policy_objective_matches_grpo_trainer(make_grpo: Callable[..., GRPOTrainer],
                                               rollout: dict[str, torch.Tensor], case: str) -> None:
    trl_settings, policy = GRPO_CASES[case]
    trainer = make_grpo(**trl_settings)
    inputs = grpo_inputs(trainer, rollout)
    expected_loss, expected_grads = trl_loss_and_grads(trainer, inputs)
    loss, grads, metrics = composer_loss_and_grads(trainer, inputs, policy, trl_normaliser(trainer, inputs))
    if trainer.loss_type != "sapo":
        assert metrics["policy/clipfrac"] > 0, "clipping must bind on some tokens for the comparison to mean much"
    assert_close(loss, expected_loss)
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    assert_close(grads, expected_grads)


def test_dapo_default_clip_higher_differs_from_trl_default(make_grpo: Callable[..., GRPOTrainer],
                                                           rollout: dict[str, torch.Tensor]) -> None:
    """Our dapo defaults to DAPO's clip-higher (0.2 / 0.28); TRL's loss_type="dapo" keeps epsilon_high = epsilon
    (0.2) unless told. Setting clip_ratio_high=0.2 reproduces TRL's default."""
    trainer = make_grpo(loss_type="dapo")
    inputs = grpo_inputs(trainer, rollout)
    with torch.no_grad():
        ratio = (trl_log_probs(trainer, inputs) - inputs["old_per_token_logps"]).exp()
    positive = (inputs["advantages"] > 0).unsqueeze(-1) & inputs["completion_mask"].bool()
    assert bool((positive & (ratio > 1.2)).any()), "a positive-advantage token above 1.2 is where the bounds differ"
    expected_loss, expected_grads = trl_loss_and_grads(trainer, inputs)
    normaliser = trl_normaliser(trainer, inputs)
    default_loss, _, _ = composer_loss_and_grads(trainer, inputs, {"objective": {"name": "dapo"}}, normaliser)
    assert not torch.isclose(default_loss, expected_loss)
    loss, grads, _ = composer_loss_and_grads(
        trainer, inputs, {"objective": {"name": "dapo", "params": {"clip_ratio_high": 0.2}}}, normaliser)
    assert_close(loss, expected_loss)
    assert_close(grads, expected_grads)


def test_trl_default_kl_is_importance_weighted(make_grpo: Callable[..., GRPOTrainer],
                                               rollout: dict[str, torch.Tensor]) -> None:
    """TRL 1.16 defaults to use_bias_correction_kl=True: its k3 term is multiplied by the (differentiable) token
    ratio. Our kl.importance_weighted reproduces it; our default (off) differs by beta * aggregate((r - 1) k3)."""
    beta = 0.05
    trainer = make_grpo(loss_type="grpo", beta=beta)
    assert trainer.args.use_bias_correction_kl
    inputs = grpo_inputs(trainer, rollout)
    expected_loss, expected_grads = trl_loss_and_grads(trainer, inputs)
    normaliser = trl_normaliser(trainer, inputs)
    objective = {"name": "grpo", "params": NO_CLAMP}
    loss, grads, _ = composer_loss_and_grads(
        trainer, inputs, {"objective": objective, "kl": {"coef": beta, "importance_weighted": True}}, normaliser)
    assert_close(loss, expected_loss)
    assert_close(grads, expected_grads)
    unweighted, _, _ = composer_loss_and_grads(trainer, inputs, {"objective": objective, "kl": {"coef": beta}},
                                               normaliser)
    with torch.no_grad():
        log_prob = trl_log_probs(trainer, inputs)
        ratio = (log_prob - inputs["old_per_token_logps"]).exp()
        kl = kl_estimate(log_prob, inputs["ref_per_token_logps"], "k3")
        gap = beta * aggregate((ratio - 1) * kl, inputs["completion_mask"].bool(), "seq-mean-token-mean", normaliser)
    assert not torch.isclose(unweighted, expected_loss)
    assert_close(unweighted + gap, expected_loss)


# ---------------------------------------------------------------- DPOTrainer losses (channel 3)

PREFERENCE_PAIRS = {
    "prompt": list(PROMPTS),
    "chosen": [" four", " two", " run the test", " read this file"],
    "rejected": [" five three", " one", " fail", " that one file is wrong"],
}


@pytest.fixture(scope="module")
def make_dpo(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
             tmp_path_factory: pytest.TempPathFactory) -> Callable[..., DPOTrainer]:
    """Build a real DPOTrainer on the tiny model; the policy is then perturbed so it differs from the reference
    (loaded separately from the same saved weights) and the log-ratios are not all zero."""
    output_dir = tmp_path_factory.mktemp("dpo")
    dataset = Dataset.from_dict(PREFERENCE_PAIRS)

    def make(**settings: Any) -> DPOTrainer:
        args = DPOConfig(output_dir=str(output_dir), bf16=False, use_cpu=True, report_to="none",
                         per_device_train_batch_size=len(PROMPTS), **settings)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tiny_tokenizer)
        assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
        generator = torch.Generator().manual_seed(26)
        with torch.no_grad():
            for param in trainer.model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        return trainer

    return make


def sequence_log_probs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probs of the completion tokens of every row, from the model's logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:].unsqueeze(-1)
    token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets).squeeze(-1)
    return torch.where(batch["completion_mask"][:, 1:].bool(), token_log_probs, 0.0).sum(-1)


def preference_batch(trainer: DPOTrainer, batch: dict[str, torch.Tensor]) -> PreferenceBatch:
    """Chosen / rejected sequence log-probs under the policy (with gradient) and the reference, and lengths."""
    chosen, rejected = sequence_log_probs(trainer.model, batch).chunk(2)
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_log_probs(trainer.ref_model, batch).chunk(2)
    chosen_length, rejected_length = batch["completion_mask"].sum(-1).to(chosen.dtype).chunk(2)
    return PreferenceBatch(chosen, rejected, ref_chosen, ref_rejected, chosen_length, rejected_length)


def dpo_collated(trainer: DPOTrainer) -> dict[str, torch.Tensor]:
    """TRL's own collation of the whole (tokenized) training set: chosen rows first, then rejected."""
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


def composer_preference_loss(trainer: DPOTrainer, batch: dict[str, torch.Tensor], loss: str, beta: float,
                             label_smoothing: float) -> tuple[torch.Tensor, Grads]:
    """Our preference channel on sequence log-probs of the same batch, and the parameter gradients."""
    trainer.model.zero_grad(set_to_none=True)
    config = ComposerConfig.from_mapping({"policy": {"weight": 0.0}, "preference": {
        "weight": 1.0, "loss": loss, "beta": beta, "label_smoothing": label_smoothing}})
    value = ComposerLoss(config)(preference=preference_batch(trainer, batch)).loss
    value.backward()
    return value.detach(), parameter_grads(trainer.model)


def trl_preference_loss(trainer: DPOTrainer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Grads]:
    """TRL's own DPO compute_loss on the collated batch (its own forward passes), and the parameter gradients."""
    trainer.model.zero_grad(set_to_none=True)
    value = trainer.compute_loss(trainer.model, batch)
    value.backward()
    return value.detach(), parameter_grads(trainer.model)


@pytest.mark.parametrize(("loss", "beta", "label_smoothing"), [
    ("sigmoid", 0.5, 0.0), ("hinge", 0.5, 0.0), ("ipo", 0.3, 0.0), ("robust", 0.5, 0.2), ("nca_pair", 0.5, 0.0)])
def test_preference_loss_matches_dpo_trainer(make_dpo: Callable[..., DPOTrainer], loss: str, beta: float,
                                             label_smoothing: float) -> None:
    trainer = make_dpo(loss_type=[loss], beta=beta, label_smoothing=label_smoothing)
    batch = dpo_collated(trainer)
    expected = trl_preference_loss(trainer, batch)
    actual = composer_preference_loss(trainer, batch, loss, beta, label_smoothing)
    with torch.no_grad():
        delta = preference_batch(trainer, batch).delta
    assert bool((delta != 0).all()), "policy and reference must differ for the comparison to mean much"
    assert_close(actual, expected)


def test_sigmoid_label_smoothing_is_ours_only(make_dpo: Callable[..., DPOTrainer]) -> None:
    """TRL 1.16 reads label_smoothing only in robust / EXO / AOT: its sigmoid ignores it. Our sigmoid applies
    conservative DPO smoothing, so TRL's sigmoid with smoothing equals ours without it."""
    trainer = make_dpo(loss_type=["sigmoid"], beta=0.5, label_smoothing=0.2)
    batch = dpo_collated(trainer)
    expected = trl_preference_loss(trainer, batch)
    assert_close(composer_preference_loss(trainer, batch, "sigmoid", 0.5, 0.0), expected)
    smoothed, _ = composer_preference_loss(trainer, batch, "sigmoid", 0.5, 0.2)
    assert not torch.isclose(smoothed, expected[0])
