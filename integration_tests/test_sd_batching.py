"""The batched self-distillation teacher path: teacher contexts tokenised in one call, prompt prefixes shared by
siblings forwarded once (two-pass teacher forward), and the EMA teacher moved in one fused update; each gives
what the per-sample path gives. Everything runs on the tiny local model and tokenizer of tiny_models.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("transformers")

from tiny_models import build_model

from composer_core.selfteach import TeacherContext, batch_template_ids, template_ids
from composer_trl.teacher_context import (
    SharedPrefixForward,
    TeacherBatch,
    left_padded_teacher_batch,
    shared_prefixes,
    tokenize_teacher_batch,
)
from composer_trl.teacher_weights import TeacherWeights

pytestmark = pytest.mark.backend("trl")

SYSTEM = {"role": "system", "content": "answer with a number"}
QUESTIONS = ["what is two plus two", "what is three times three"]
FEEDBACK = ["the answer is five", "wrong answer", "the answer is five", "no number", "wrong", "the result is nine"]


def sibling_messages() -> tuple[list[list[dict[str, str]]], list[list[dict[str, str]]]]:
    """Six samples of two prompts (three each): their prompts and teacher messages, which start alike within a
    prompt (the question) and differ in the feedback; samples 0 and 2 have the same teacher messages."""
    prompts = [[SYSTEM, {"role": "user", "content": QUESTIONS[index // 3]}] for index in range(6)]
    teacher = [[SYSTEM, {"role": "user", "content": f"{QUESTIONS[index // 3]} the feedback is {FEEDBACK[index]} "
                                                    "correct the answer"}] for index in range(6)]
    return prompts, teacher


def completions(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded completion ids of different lengths, with their mask."""
    texts = ["four", "the answer is four", "five", "nine nine", "the sum is nine", "nine"]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


def sibling_batch(tokenizer: Any) -> tuple[TeacherBatch, torch.Tensor]:
    prompts, teacher = sibling_messages()
    rows = batch_template_ids(tokenizer, teacher, {})
    ids, mask = completions(tokenizer)
    return left_padded_teacher_batch(rows, [True] * 6, ids, mask, tokenizer.pad_token_id,
                                     prefix_keys=[repr(prompt) for prompt in prompts]), mask


def test_batch_template_ids_equal_one_conversation_at_a_time(tiny_tokenizer):
    _, teacher = sibling_messages()
    batched = batch_template_ids(tiny_tokenizer, teacher, {})
    assert batched == [template_ids(tiny_tokenizer, messages, {}) for messages in teacher]
    assert batched[0] == batched[2] and batched[0] is not batched[2]  # rendered once, handed out as copies
    assert batch_template_ids(tiny_tokenizer, [], {}) == []


def test_shared_prefixes_are_the_common_prefix_of_each_key_leaving_a_last_token():
    rows = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [7, 8], [1, 2, 3, 4], [1, 2, 3, 4]]
    groups, lengths = shared_prefixes(rows, ["a", "a", "b", "c", "c"])
    assert groups == [0, 0, 1, 2, 2]
    assert lengths == [3, 3, 1, 3, 3]  # identical rows keep their last token out of the prefix


def test_the_sibling_batch_is_forwarded_in_two_passes(tiny_tokenizer):
    model = build_model(tiny_tokenizer).eval()
    batch, _ = sibling_batch(tiny_tokenizer)
    shared = SharedPrefixForward.plan(batch, model)
    assert shared is not None
    assert shared.prefix_ids.shape[0] == 2 and shared.row_prefix.tolist() == [0, 0, 0, 1, 1, 1]
    assert shared.rest_ids.shape[1] < batch.input_ids.shape[1]


def test_two_pass_teacher_logits_equal_each_unpadded_row_alone(tiny_tokenizer):
    model = build_model(tiny_tokenizer).eval()
    batch, mask = sibling_batch(tiny_tokenizer)
    one_pass = TeacherBatch(batch.input_ids, batch.attention_mask, batch.sd_mask, batch.prompt_length)
    with torch.no_grad():
        shared = SharedPrefixForward.plan(batch, model).completion_logits(model)
        padded = one_pass.completion_logits(model)
        for row in range(mask.shape[0]):
            prompt_mask = batch.attention_mask[row, :batch.prompt_length] == 1
            prompt = batch.input_ids[row, :batch.prompt_length][prompt_mask]
            completion = batch.input_ids[row, batch.prompt_length:][mask[row] == 1]
            alone = model(input_ids=torch.cat([prompt, completion]).unsqueeze(0)).logits[0]
            expected = alone[len(prompt) - 1:len(prompt) - 1 + len(completion)]
            assert_close(shared[row, :len(completion)], expected, atol=1e-5, rtol=1e-5)
            assert_close(padded[row, :len(completion)], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(batch.completion_logits(model), shared)  # the batch takes the two-pass route


def test_rows_without_shared_prefixes_take_one_pass(tiny_tokenizer):
    model = build_model(tiny_tokenizer).eval()
    _, teacher = sibling_messages()
    ids, mask = completions(tiny_tokenizer)
    alone = tokenize_teacher_batch(tiny_tokenizer, [[{"role": "user", "content": str(index)}] for index in range(6)],
                                   [TeacherContext(messages, ("feedback",)) for messages in teacher], ids, mask)
    assert alone.prefix_group.tolist() == list(range(6))
    assert SharedPrefixForward.plan(alone, model) is None  # each row its own prefix: nothing saved
    no_groups = TeacherBatch(alone.input_ids, alone.attention_mask, alone.sd_mask, alone.prompt_length)
    assert SharedPrefixForward.plan(no_groups, model) is None


def test_the_trainer_path_groups_siblings_by_prompt(tiny_tokenizer):
    prompts, teacher = sibling_messages()
    ids, mask = completions(tiny_tokenizer)
    contexts = [TeacherContext(messages, ("feedback",)) for messages in teacher]
    batch = tokenize_teacher_batch(tiny_tokenizer, prompts, contexts, ids, mask)
    expected, _ = sibling_batch(tiny_tokenizer)
    for name in ("input_ids", "attention_mask", "sd_mask", "prefix_group", "prefix_length"):
        assert torch.equal(getattr(batch, name), getattr(expected, name)), name


@pytest.mark.parametrize("peft", [False, True])
def test_ema_update_equals_a_per_parameter_lerp(tiny_tokenizer, peft: bool):
    model = build_model(tiny_tokenizer)
    if peft:
        from peft import LoraConfig, get_peft_model

        from composer_trl.peft_torchao import peft_ignores_old_torchao

        peft_ignores_old_torchao()  # as composer_trl.lora does before TRL builds a LoRA model
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(model, config)
    teacher = TeacherWeights.from_config("ema", model, rate=0.25)
    before = {name: value.clone() for name, value in teacher.weights().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    teacher.after_step(model)
    student = {name: value.detach() for name, value in model.named_parameters()}
    for name, value in teacher.weights().items():
        source = student[name.replace(".composer_teacher.", ".default.")] if peft else student.get(name)
        if source is None:  # buffers of the frozen copy
            continue
        assert torch.equal(value, before[name].lerp(source, 0.25)), name


@pytest.mark.parametrize("change", ["sliding window", "absolute positions", "flash attention"])
def test_models_the_split_is_not_checked_for_take_one_pass(tiny_tokenizer, change: str):
    batch, _ = sibling_batch(tiny_tokenizer)
    model = build_model(tiny_tokenizer).eval()
    if change == "sliding window":
        model.config.layer_types = ["sliding_attention", "full_attention"]
    elif change == "absolute positions":
        model.config.rope_parameters = None
    else:
        model.config._attn_implementation_internal = "flash_attention_2"
    assert SharedPrefixForward.plan(batch, model) is None


def test_a_sample_without_a_context_does_not_cut_its_siblings_prefix_short(tiny_tokenizer):
    prompts, teacher = sibling_messages()
    ids, mask = completions(tiny_tokenizer)
    contexts = [TeacherContext(messages, ("feedback",)) for messages in teacher]
    contexts[1] = TeacherContext(None)  # its teacher prompt is its own prompt
    batch = tokenize_teacher_batch(tiny_tokenizer, prompts, contexts, ids, mask)
    assert batch.prefix_group.tolist() == [0, 1, 0, 2, 2, 2]
    together, _ = sibling_batch(tiny_tokenizer)
    assert batch.prefix_length[0] > together.prefix_length[0] > 0  # samples 0 and 2 share all but a last token
