"""The pieces of the composer trainer's teacher pass that run without a GPU: teacher rows from real chat
messages and a locally built tokenizer, the teacher's top-K read back per response token, and the EMA/frozen
teacher copy swapped in and out of a model's parameters."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("transformers")

from tiny_models import build_model

from composer_core.errors import BatchError, ConfigError
from composer_core.selfteach import RepromptSettings, TeacherContext, build_teacher_contexts
from composer_verl.composite_loss import DISTILL_MASK, TEACHER_IDS
from composer_verl.teacher_pass import (
    messages_of,
    nested,
    sequence_rewards,
    student_fields,
    teacher_rows,
)
from composer_verl.teacher_weights import TeacherShadow

pytestmark = pytest.mark.backend("verl")

PROMPTS = [[{"role": "user", "content": "what is two plus two"}]] * 2 + [
    [{"role": "user", "content": "which test fail"}]]


def encoded(tokenizer, texts: list[str]) -> torch.Tensor:
    return nested([torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts])


def test_teacher_rows_put_the_rewritten_prompt_before_the_same_response(tiny_tokenizer) -> None:
    prompts = nested([torch.tensor(tiny_tokenizer.apply_chat_template(p, add_generation_prompt=True,
                                                                      tokenize=True, return_dict=False))
                      for p in PROMPTS])
    responses = encoded(tiny_tokenizer, ["the answer is four", "the answer is five", "the test pass"])
    response_mask = nested([torch.ones(len(row), dtype=torch.long) for row in responses.unbind()])
    built = build_teacher_contexts(PROMPTS, ["the answer is four", "the answer is five", "the test pass"],
                                   ["a", "a", "b"], [1.0, 0.0, 0.0], settings=RepromptSettings())
    assert [c.sources for c in built.contexts] == [(), ("demonstration",), ()]
    rows, tags = teacher_rows(tiny_tokenizer, prompts, responses, response_mask, built.contexts, RepromptSettings())
    for index in range(3):
        prompt = rows["prompts"][index]
        response = responses[index]
        assert torch.equal(rows["input_ids"][index], torch.cat([prompt, response]))
        assert torch.equal(rows["position_ids"][index], torch.arange(len(prompt) + len(response)))
        assert tags[index]["seq_len"] == len(prompt) + len(response)
    assert torch.equal(rows["prompts"][0], prompts[0])  # no context: the student's own prompt
    teacher_text = tiny_tokenizer.decode(rows["prompts"][1])
    assert "the answer is four" in teacher_text and len(rows["prompts"][1]) > len(prompts[1])


def test_student_fields_mask_only_targeted_rows() -> None:
    mask = nested([torch.ones(3, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    ids = nested([torch.zeros(3, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)])
    fields = student_fields(ids, ids.float(), mask, [False, True])
    assert fields[DISTILL_MASK][0].sum() == 0 and fields[DISTILL_MASK][1].sum() == 2
    assert fields[TEACHER_IDS][1].shape == (2, 4)


def test_rewards_and_messages_from_verls_columns() -> None:
    scores = nested([torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.5])])
    assert sequence_rewards(scores) == [1.0, 0.5]
    assert messages_of([PROMPTS[0]]) == [PROMPTS[0]]
    with pytest.raises(BatchError, match="chat messages"):
        messages_of([["just a string"]])


def test_mismatched_columns_are_named() -> None:
    with pytest.raises(BatchError, match="one of each per sample"):
        teacher_rows(None, nested([torch.ones(2)]), nested([torch.ones(2)]), nested([torch.ones(2)]),
                     [TeacherContext(None)] * 2, RepromptSettings())


# ---------------------------------------------------------------- teacher weights


def parameters_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@torch.no_grad()
def optimiser_step(model: torch.nn.Module, shift: float) -> list[torch.Tensor]:
    """Stand-in for an update: move every parameter; returns the new values."""
    for p in model.parameters():
        p.add_(shift)
    return parameters_of(model)


def test_ema_teacher_moves_toward_the_policy_and_swaps_back(tiny_tokenizer) -> None:
    model = build_model(tiny_tokenizer)
    initial = parameters_of(model)
    shadow = TeacherShadow(list(model.parameters()), "ema", 0.25)
    policy = optimiser_step(model, 1.0)
    shadow.update(list(model.parameters()))
    expected = [0.75 * start + 0.25 * now for start, now in zip(initial, policy, strict=True)]
    for teacher, value in zip(shadow.weights, expected, strict=True):
        torch.testing.assert_close(teacher, value)
    inputs = torch.tensor([[1, 2, 3]])
    with shadow.swapped_in(list(model.parameters())):
        for p, value in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), value)
        teacher_logits = model(input_ids=inputs).logits
    for p, now in zip(model.parameters(), policy, strict=True):
        torch.testing.assert_close(p.detach(), now)
    assert not torch.allclose(teacher_logits, model(input_ids=inputs).logits)


def test_frozen_teacher_stays_and_live_needs_no_copy(tiny_tokenizer) -> None:
    model = build_model(tiny_tokenizer)
    initial = parameters_of(model)
    shadow = TeacherShadow(list(model.parameters()), "frozen", 0.5)
    optimiser_step(model, 2.0)
    shadow.update(list(model.parameters()))
    for teacher, start in zip(shadow.weights, initial, strict=True):
        torch.testing.assert_close(teacher, start)
    with pytest.raises(ConfigError, match="no weight copy"):
        TeacherShadow(list(model.parameters()), "live", 0.5)


def test_a_changed_model_is_refused(tiny_tokenizer) -> None:
    model = build_model(tiny_tokenizer)
    shadow = TeacherShadow(list(model.parameters()), "ema", 0.1)
    with pytest.raises(RuntimeError, match="changed shape or number"):
        shadow.update(list(model.parameters())[:-1])


def test_teacher_copy_resumes_from_its_checkpoint_file(tiny_tokenizer, tmp_path) -> None:
    model = build_model(tiny_tokenizer)
    shadow = TeacherShadow(list(model.parameters()), "ema", 0.5)
    optimiser_step(model, 1.0)
    shadow.update(list(model.parameters()))
    shadow.save(tmp_path / "teacher.pt")
    resumed = TeacherShadow(list(model.parameters()), "ema", 0.5)  # a restart copies the resumed policy...
    resumed.load(tmp_path / "teacher.pt")  # ...then takes the saved teacher
    for a, b in zip(resumed.weights, shadow.weights, strict=True):
        torch.testing.assert_close(a, b)
    other = TeacherShadow(list(model.parameters())[:-1], "ema", 0.5)
    with pytest.raises(RuntimeError, match="another model or sharding"):
        other.load(tmp_path / "teacher.pt")
