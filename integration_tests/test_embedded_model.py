"""The embedded default model loads offline with `from_pretrained`, renders chat conversations, and solves part,
but not all, of the held-out arithmetic problems."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from composer_core.tasks.arithmetic import Problem, make_problems, score
from composer_trl.defaults import EMBEDDED_MODEL

CONVERSATION = [
    {"role": "system", "content": "Answer with a number."},
    {"role": "user", "content": "What is 47 + 38?"},
    {"role": "user", "content": "Hint: the ones digits add up to 7 + 8 = 15, so write 5 and carry 1."},
    {"role": "assistant", "content": "85"},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL).eval()


def greedy_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, problems: list[Problem]) -> list[str]:
    """Greedy completions, one problem at a time (no padding, so nothing depends on a padding side)."""
    answers = []
    for problem in problems:
        prompt = tokenizer.apply_chat_template(problem.messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            ids = model.generate(**prompt, max_new_tokens=6, do_sample=False)
        answers.append(tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def test_the_folder_is_small_and_in_safetensors() -> None:
    files = {path.name: path.stat().st_size for path in EMBEDDED_MODEL.iterdir()}
    assert "model.safetensors" in files
    assert "README.md" in files
    assert sum(files.values()) < 20 * 2**20


def test_chat_template_renders_a_multi_message_conversation(tokenizer: PreTrainedTokenizerBase) -> None:
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<bos><|system|>Answer with a number.<eos><|user|>What is 47 + 38?<eos>"
                    f"<|user|>{CONVERSATION[2]['content']}<eos><|assistant|>85<eos>")
    prompt = tokenizer.apply_chat_template(CONVERSATION[:3], add_generation_prompt=True, tokenize=False)
    assert text.startswith(prompt)
    assert prompt.endswith("<eos><|assistant|>")


def test_tokenizer_round_trips_text_and_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False) + "\n  Ünïcode, tabs\tand 'quotes'"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids
    specials = tokenizer.convert_tokens_to_ids(["<bos>", "<|system|>", "<|user|>", "<|assistant|>", "<eos>"])
    assert set(specials) <= set(ids)


def test_auto_tokenizer_matches_the_generic_fast_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """transformers 5 picks Qwen2Tokenizer for a qwen2 config; both must tokenize alike."""
    generic = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_MODEL)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False) + " it's 1,085 ünïcode\n\n"
    assert tokenizer(text)["input_ids"] == generic(text)["input_ids"]
    assert len(tokenizer) == len(generic)


def test_model_matches_the_tokenizer(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_greedy_accuracy_on_held_out_problems_is_partial(model: torch.nn.Module,
                                                         tokenizer: PreTrainedTokenizerBase) -> None:
    problems = make_problems(32, seed=0, split="eval")
    answers = greedy_answers(model, tokenizer, problems)
    accuracy = sum(score(problem, answer).reward for problem, answer in zip(problems, answers, strict=True)) / 32
    assert 0.0 < accuracy < 1.0, answers
