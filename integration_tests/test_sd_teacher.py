"""Self-distillation teacher for the TRL adapter: contexts built from raw chat messages, teacher rows aligned
with the student's completion ids, and the teacher weight strategies (ema, frozen, trust-region, live), with and
without a PEFT LoRA adapter. Everything runs on the tiny local model and tokenizer of tiny_models.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.testing import assert_close

pytest.importorskip("transformers")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model
from tiny_models import build_model

from composer_core.errors import BatchError, ConfigError
from composer_core.selfteach import RepromptSettings, build_teacher_contexts, strip_thinking
from composer_trl.teacher_context import TeacherBatch, tokenize_teacher_batch
from composer_trl.teacher_weights import TEACHER_ADAPTER, TeacherWeights

pytestmark = pytest.mark.backend("trl")

SYSTEM = {"role": "system", "content": "solve the question"}
PROMPTS = [
    [SYSTEM, {"role": "user", "content": "what is two plus two"}],
    [SYSTEM, {"role": "user", "content": "what is two plus two"}],
    [SYSTEM, {"role": "user", "content": "which test fail"}],
    [SYSTEM, {"role": "user", "content": "which test fail"}],
]
COMPLETIONS = ["<think> add two and two </think> the answer is four", "the answer is five", "the test pass",
               "no"]
GROUPS = [0, 0, 1, 1]
REWARDS = [1.0, 0.0, 0.0, 0.0]
FEEDBACK = [None, "wrong answer", "the test fail", "  "]
HINTS = [None, "add the two numbers", None, None]
CLOSING = "\n\nCorrectly solve the original question.\n"


def contexts(**settings: Any):
    return build_teacher_contexts(PROMPTS, COMPLETIONS, GROUPS, REWARDS, FEEDBACK, HINTS,
                                  RepromptSettings(**settings))


def completion_tensors(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The completions as the student produced them: word ids then eos, right-padded, with their mask."""
    rows = [tokenizer(text.replace("<think>", "").replace("</think>", ""), add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id] for text in COMPLETIONS]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


def rendered(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def template_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


# ---- teacher contexts -------------------------------------------------------------------------------------------


def test_context_sources_and_counts():
    built = contexts()
    assert [context.sources for context in built.contexts] == [(), ("demonstration", "hint"), ("feedback",), ()]
    assert [context.reason for context in built.contexts] == ["none", "demonstration", "feedback", "none"]
    assert built.contexts[0].messages is None  # its own success is not a demonstration; no sibling succeeded
    counts = built.counts
    assert (counts.total, counts.with_demonstration, counts.with_feedback, counts.with_hint,
            counts.without_context) == (4, 1, 1, 1, 2)
    assert counts.metrics()["self_distillation/reprompt_fraction"] == 0.5


def test_teacher_text_from_raw_messages(tiny_tokenizer):
    built = contexts()
    demo_messages = built.contexts[1].messages
    assert demo_messages[0] == SYSTEM
    assert demo_messages[1]["content"] == ("what is two plus two\nCorrect solution:\n\nthe answer is four\n\n"
                                           "\nHint:\n\nadd the two numbers\n\n" + CLOSING)
    text = rendered(tiny_tokenizer, demo_messages)
    assert text.startswith("<system> solve the question <eos> <user> what is two plus two")
    assert text.endswith(CLOSING + " <eos> <assistant> ")
    assert "<think>" not in text and "add two and two" not in text
    assert "feedback" not in text  # feedback only without a demonstration (the default)
    for role in ("<system>", "<user>", "<assistant>", "<eos> <eos>"):
        assert text.count(role) == (role != "<eos> <eos>")  # no role header leaked into a content part
    feedback_text = rendered(tiny_tokenizer, built.contexts[2].messages)
    assert ("which test fail\nThe following is feedback from your unsuccessful earlier attempt:\n\nthe test fail\n\n"
            + CLOSING) in feedback_text
    assert "Correct solution" not in feedback_text
    assert PROMPTS[1][1]["content"] == "what is two plus two"  # the caller's messages are not modified


def test_context_settings():
    both = contexts(feedback_only_without_solution=False)
    assert both.contexts[1].sources == ("demonstration", "feedback", "hint")
    own = contexts(dont_reprompt_on_self_success=False)
    assert own.contexts[0].sources == ("demonstration",)
    assert "the answer is four" in own.contexts[0].messages[1]["content"]
    thinking = contexts(remove_thinking_from_demonstration=False)
    assert "<think> add two and two </think>" in thinking.contexts[1].messages[1]["content"]
    assert contexts(success_reward_threshold=1.5).counts.with_demonstration == 0
    by_tensor = build_teacher_contexts(PROMPTS, COMPLETIONS, torch.tensor(GROUPS), torch.tensor(REWARDS))
    assert by_tensor.counts.with_demonstration == 1  # tensor group ids are compared by value
    quiet = contexts(include_feedback=False, include_hints=False)
    assert [context.sources for context in quiet.contexts] == [(), ("demonstration",), (), ()]
    with pytest.raises(ValueError, match="hint_template must use exactly"):
        RepromptSettings(hint_template="Hint: {advice}")
    with pytest.raises(BatchError, match="one entry per prompt"):
        build_teacher_contexts(PROMPTS, COMPLETIONS[:3], GROUPS, REWARDS)


def test_strip_thinking_handles_a_block_opened_in_the_prompt():
    assert strip_thinking("<think>a</think> b <think>c</think> d") == "b  d"
    assert strip_thinking("reasoning only </think> answer") == "answer"


# ---- teacher rows and SD mask -----------------------------------------------------------------------------------


def teacher_batch(tokenizer: Any, **settings: Any) -> tuple[TeacherBatch, torch.Tensor, torch.Tensor]:
    ids, mask = completion_tensors(tokenizer)
    batch = tokenize_teacher_batch(tokenizer, PROMPTS, contexts().contexts, ids, mask, RepromptSettings(**settings))
    return batch, ids, mask


def test_teacher_rows_end_with_the_student_completion(tiny_tokenizer):
    batch, ids, mask = teacher_batch(tiny_tokenizer)
    built = contexts()
    width = ids.shape[1]
    assert batch.completion_length == width
    assert torch.equal(batch.input_ids[:, -width:], ids)
    assert torch.equal(batch.attention_mask[:, -width:], mask)
    for row, (prompt, context) in enumerate(zip(PROMPTS, built.contexts, strict=True)):
        expected = template_ids(tiny_tokenizer, context.messages or prompt)
        prompt_part = batch.input_ids[row, :batch.prompt_length][batch.attention_mask[row, :batch.prompt_length] == 1]
        assert prompt_part.tolist() == expected
        assert batch.attention_mask[row, :batch.prompt_length].tolist() == (
            [0] * (batch.prompt_length - len(expected)) + [1] * len(expected))
    assert torch.equal(batch.sd_mask, mask * torch.tensor([0, 1, 1, 0]).unsqueeze(1))


def test_completion_logits_align_with_each_unpadded_row(tiny_tokenizer):
    model = build_model(tiny_tokenizer).eval()
    batch, ids, mask = teacher_batch(tiny_tokenizer)
    with torch.no_grad():
        aligned = batch.completion_logits(model)
        assert aligned.shape == (*ids.shape, len(tiny_tokenizer))
        for row in range(ids.shape[0]):
            prompt = batch.input_ids[row, :batch.prompt_length][batch.attention_mask[row, :batch.prompt_length] == 1]
            completion = ids[row][mask[row] == 1]
            alone = model(input_ids=torch.cat([prompt, completion]).unsqueeze(0)).logits[0]
            predicting = alone[len(prompt) - 1:len(prompt) - 1 + len(completion)]
            assert_close(aligned[row, :len(completion)], predicting, atol=1e-5, rtol=1e-5)


def test_all_none_batch_has_an_empty_sd_mask(tiny_tokenizer):
    built = build_teacher_contexts(PROMPTS, COMPLETIONS, GROUPS, [0.0] * 4)
    ids, mask = completion_tensors(tiny_tokenizer)
    batch = tokenize_teacher_batch(tiny_tokenizer, PROMPTS, built.contexts, ids, mask)
    assert built.counts.without_context == 4
    assert batch.sd_mask.sum() == 0 and batch.sd_mask.shape == ids.shape
    assert torch.equal(batch.input_ids[:, -ids.shape[1]:], ids)


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_side_applies_to_the_teacher_prompt_only(tiny_tokenizer, side):
    limit = 6
    batch, ids, _ = teacher_batch(tiny_tokenizer, max_reprompt_len=limit, truncation_side=side)
    built = contexts()
    assert batch.prompt_length == limit
    assert torch.equal(batch.input_ids[:, -ids.shape[1]:], ids)
    for row, (prompt, context) in enumerate(zip(PROMPTS, built.contexts, strict=True)):
        full = template_ids(tiny_tokenizer, context.messages or prompt)
        kept = full[-limit:] if side == "left" else full[:limit]
        assert batch.input_ids[row, :limit].tolist() == kept
    if side == "left":  # the generation prompt survives left truncation
        assert batch.input_ids[0, limit - 1].item() == tiny_tokenizer.convert_tokens_to_ids("<assistant>")
    else:  # right truncation keeps the system message
        assert batch.input_ids[0, 0].item() == tiny_tokenizer.convert_tokens_to_ids("<system>")


def test_mismatched_completion_shapes_are_refused(tiny_tokenizer):
    ids, mask = completion_tensors(tiny_tokenizer)
    with pytest.raises(BatchError, match="same"):
        tokenize_teacher_batch(tiny_tokenizer, PROMPTS, contexts().contexts, ids, mask[:, :-1])


# ---- teacher weights --------------------------------------------------------------------------------------------

INPUT_IDS = torch.tensor([[6, 45, 7, 44, 1, 4, 46], [4, 30, 40, 30, 1, 5, 9]])


def logits_of(model: nn.Module) -> torch.Tensor:
    return model(input_ids=INPUT_IDS).logits


def student_logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(model)


def replace_weights(model: nn.Module, tokenizer: Any, seed: int) -> dict[str, torch.Tensor]:
    """Load another seed's weights into the model (a stand-in for training), returning them."""
    weights = build_model(tokenizer, seed).state_dict()
    model.load_state_dict(weights)
    return {name: tensor.clone() for name, tensor in model.named_parameters()}


def test_ema_moves_the_teacher_by_rate_toward_the_student(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=0)
    initial = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    teacher = TeacherWeights.from_config("ema", model, rate=0.1)
    assert teacher.held_parameters == sum(parameter.numel() for parameter in model.parameters())
    student = replace_weights(model, tiny_tokenizer, seed=1)
    teacher.after_step(model)
    held = dict(teacher.module.named_parameters())
    for name, start in initial.items():
        assert_close(held[name], 0.9 * start + 0.1 * student[name])
        assert torch.equal(dict(model.named_parameters())[name], student[name])
    logits = teacher.teacher_logits(model, logits_of)
    assert not logits.requires_grad
    assert_close(logits, student_logits(teacher.module))


def test_ema_checkpoint_round_trip(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=0)
    teacher = TeacherWeights.from_config("ema", model, rate=0.1)
    replace_weights(model, tiny_tokenizer, seed=1)
    teacher.after_step(model)
    resumed = TeacherWeights.from_config("ema", model, rate=0.1)  # a restart copies the trained student...
    resumed.load_state_dict(teacher.state_dict())  # ...and the checkpoint restores the averaged teacher
    assert_close(resumed.teacher_logits(model, logits_of), teacher.teacher_logits(model, logits_of))
    with pytest.raises(ConfigError, match="'ema' teacher"):
        TeacherWeights.from_config("live", model).load_state_dict(teacher.state_dict())


def test_frozen_keeps_the_initial_weights(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=0)
    initial = student_logits(model)
    teacher = TeacherWeights.from_config("frozen", model)
    replace_weights(model, tiny_tokenizer, seed=1)
    teacher.after_step(model)
    assert_close(teacher.teacher_logits(model, logits_of), initial)
    assert not torch.allclose(student_logits(model), initial)


def test_live_is_the_student_and_restores_its_mode(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=0)
    teacher = TeacherWeights.from_config("live", model)
    assert teacher.held_parameters == 0 and teacher.state_dict()["weights"] == {}
    assert_close(teacher.teacher_logits(model, logits_of), student_logits(model))
    assert model.training and all(module.training for module in model.modules())


def test_trust_region_mixes_reference_and_student_logits(tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=0)
    reference = student_logits(model)
    teacher = TeacherWeights.from_config("trust-region", model, rate=0.3)
    replace_weights(model, tiny_tokenizer, seed=1)
    assert_close(teacher.teacher_logits(model, logits_of), 0.7 * reference + 0.3 * student_logits(model))


def test_trust_region_can_reuse_an_existing_reference_model(tiny_tokenizer):
    model, reference = build_model(tiny_tokenizer, seed=0), build_model(tiny_tokenizer, seed=1)
    teacher = TeacherWeights.from_config("trust-region", model, rate=0.5, reference=reference)
    assert teacher.held_parameters == 0
    expected = 0.5 * student_logits(reference) + 0.5 * student_logits(model)
    assert_close(teacher.teacher_logits(model, logits_of), expected)


@pytest.mark.parametrize(("strategy", "rate", "message"), [
    ("emma", 0.05, "unknown teacher strategy 'emma'"),
    ("ema", 0.0, r"rate must be a number in \(0, 1\]"),
    ("trust-region", 1.5, "rate must be"),
    ("ema", True, "rate must be"),
])
def test_bad_strategy_or_rate_is_refused(tiny_tokenizer, strategy, rate, message):
    with pytest.raises(ConfigError, match=message):
        TeacherWeights.from_config(strategy, build_model(tiny_tokenizer), rate=rate)


# ---- LoRA -------------------------------------------------------------------------------------------------------


def lora_model(tokenizer: Any) -> nn.Module:
    """The tiny model with a LoRA adapter whose B matrices are non-zero, so the student differs from its base."""
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(build_model(tokenizer, seed=0), config)
    perturb_adapter(model, "default", seed=2)
    return model


def perturb_adapter(model: nn.Module, adapter: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{adapter}." in name:
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))


def adapter_weights(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    return {name.replace(f".{adapter}.", "."): parameter.detach().clone()
            for name, parameter in model.named_parameters() if f".{adapter}." in name}


def test_lora_frozen_is_the_base_with_adapters_disabled(tiny_tokenizer):
    model = lora_model(tiny_tokenizer)
    base = student_logits(build_model(tiny_tokenizer, seed=0))
    teacher = TeacherWeights.from_config("frozen", model)
    assert teacher.held_parameters == 0
    assert_close(teacher.teacher_logits(model, logits_of), base)
    assert not torch.allclose(student_logits(model), base)


def test_lora_ema_averages_a_second_adapter(tiny_tokenizer):
    model = lora_model(tiny_tokenizer)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    adapter_size = sum(parameter.numel() for name, parameter in model.named_parameters() if ".default." in name)
    teacher = TeacherWeights.from_config("ema", model, rate=0.1)
    assert TEACHER_ADAPTER in model.peft_config
    assert teacher.held_parameters == adapter_size < sum(parameter.numel() for parameter in model.parameters()) // 10
    assert adapter_weights(model, TEACHER_ADAPTER).keys() == adapter_weights(model, "default").keys()
    assert_close(teacher.teacher_logits(model, logits_of), student_logits(model))  # starts as the student adapter

    old_teacher = adapter_weights(model, TEACHER_ADAPTER)
    perturb_adapter(model, "default", seed=3)
    student = adapter_weights(model, "default")
    teacher.after_step(model)
    for name, value in adapter_weights(model, TEACHER_ADAPTER).items():
        assert_close(value, 0.9 * old_teacher[name] + 0.1 * student[name])
    assert not torch.allclose(teacher.teacher_logits(model, logits_of), student_logits(model))
    assert model.active_adapter == "default"
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == trainable


def test_lora_ema_checkpoint_holds_the_teacher_adapter_only(tiny_tokenizer):
    model = lora_model(tiny_tokenizer)
    teacher = TeacherWeights.from_config("ema", model, rate=0.1)
    state = teacher.state_dict()
    assert all(f".{TEACHER_ADAPTER}." in name for name in state["weights"])
    saved = {name: tensor.clone() + 1.0 for name, tensor in state["weights"].items()}
    teacher.load_state_dict({"strategy": "ema", "weights": saved})
    assert_close(adapter_weights(model, TEACHER_ADAPTER),
                 {name.replace(f".{TEACHER_ADAPTER}.", "."): tensor for name, tensor in saved.items()})


def test_lora_ema_refuses_trainable_weights_outside_the_adapter(tiny_tokenizer):
    model = lora_model(tiny_tokenizer)
    model.get_input_embeddings().weight.requires_grad_(True)
    with pytest.raises(ConfigError, match="shared by teacher and student"):
        TeacherWeights.from_config("ema", model)


@pytest.mark.parametrize("strategy", ["ema", "frozen", "trust-region", "live"])
def test_lora_teacher_on_a_teacher_batch(tiny_tokenizer, strategy):
    """The trainer's call pattern: teacher logits aligned with the completion, from the teacher rows."""
    model = lora_model(tiny_tokenizer)
    batch, ids, _ = teacher_batch(tiny_tokenizer)
    teacher = TeacherWeights.from_config(strategy, model, rate=0.25)
    logits = teacher.teacher_logits(model, batch.completion_logits)
    assert logits.shape == (*ids.shape, len(tiny_tokenizer))
    with torch.no_grad():
        student = batch.completion_logits(model)
        with model.disable_adapter():
            base = batch.completion_logits(model)
    expected = {"ema": student, "live": student, "frozen": base, "trust-region": 0.75 * base + 0.25 * student}
    assert_close(logits, expected[strategy])
