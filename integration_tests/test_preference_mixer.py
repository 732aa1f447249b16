"""The preference mixer of the TRL adapter: the data side of channel 3 (trace-replay DPO, composer-core's own
research channel, not part of Cursor's Composer recipe), on a tiny local model.

Covered: validation errors, tokenisation (shared prompt, completion mask on the assistant tokens only, plain
text), the seeded cycle, summed log-probs against a manual computation and against TRL's DPOTrainer, and the
three ways to get a reference (frozen copy, disabled PEFT adapters, a PEFT "ref" adapter).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

pytest.importorskip("trl")
pytest.importorskip("peft")

from datasets import Dataset
from peft import LoraConfig, get_peft_model
from tiny_models import build_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from trl import DPOConfig, DPOTrainer

from composer_core import ComposerConfig, ComposerLoss, ConfigError
from composer_core.replay.pairs import PreferencePair, pairs_to_dataset
from composer_core.traces.contracts import Provenance
from composer_trl.preference_mixer import (
    PreferenceDataError,
    PreferenceMixer,
    PreferenceTokens,
    chat_ids,
    preference_batch,
    reference_log_probs,
    sequence_log_probs,
)

pytestmark = pytest.mark.backend("trl")

PROMPTS = (
    [{"role": "user", "content": "what is two plus two"}],
    [{"role": "system", "content": "solve the question"}, {"role": "user", "content": "one plus one"}],
    [{"role": "user", "content": "fix the error"}, {"role": "assistant", "content": "read the file"},
     {"role": "user", "content": "the test is a fail"}],
    [{"role": "user", "content": "which file to read"}],
)
CHOSEN = ("four", "two", "run the test", "read this file")
REJECTED = ("five three", "one", "fail", "that one file is wrong")


def make_pair(index: int) -> PreferencePair:
    return PreferencePair(
        pair_id=f"pair-{index}", trace_id=f"trace-{index}", step=len(PROMPTS[index]), prompt=list(PROMPTS[index]),
        chosen={"role": "assistant", "content": CHOSEN[index]},
        rejected={"role": "assistant", "content": REJECTED[index]}, chosen_action=CHOSEN[index],
        rejected_action=REJECTED[index], chosen_by="majority", chosen_teachers=["a", "b"], rejected_teachers=["c"],
        votes={CHOSEN[index]: 2, REJECTED[index]: 1}, agreement=2 / 3, cost_usd=0.0, latency_s=0.0,
        provenance=Provenance(format="openai_messages", file="traces.jsonl", line=index + 1))


def conversational_rows() -> dict[str, list[Any]]:
    """The same pairs in TRL's conversational format, with no other column."""
    return {"prompt": [list(prompt) for prompt in PROMPTS],
            "chosen": [[{"role": "assistant", "content": text}] for text in CHOSEN],
            "rejected": [[{"role": "assistant", "content": text}] for text in REJECTED]}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return pairs_to_dataset(make_pair(index) for index in range(len(PROMPTS)))


@pytest.fixture(scope="module")
def tokens(dataset: Dataset, tiny_tokenizer: PreTrainedTokenizerBase) -> PreferenceTokens:
    """Every pair of the data set in one batch, in data set order."""
    return PreferenceMixer(dataset, tiny_tokenizer, batch_size=len(dataset), shuffle=False).next_batch()


def prompt_length(tokens: PreferenceTokens, row: int) -> int:
    return int(tokens.completion_mask[row].argmax())


def preference_loss(batch: Any) -> torch.Tensor:
    config = ComposerConfig.from_mapping({"policy": {"weight": 0.0},
                                          "preference": {"weight": 1.0, "beta": 0.5, "loss": "sigmoid"}})
    return ComposerLoss(config)(preference=batch).loss


# ---------------------------------------------------------------- tokenisation


def test_chosen_and_rejected_rows_share_the_prompt_tokens(tokens: PreferenceTokens,
                                                          tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = tokens.num_pairs
    assert tokens.indices == tuple(range(len(PROMPTS)))
    assert tokens.input_ids.shape == tokens.attention_mask.shape == tokens.completion_mask.shape
    assert tokens.input_ids.shape[0] == 2 * pairs
    for index, prompt in enumerate(PROMPTS):
        expected = chat_ids(tiny_tokenizer, list(prompt), add_generation_prompt=True)
        for row in (index, pairs + index):
            assert prompt_length(tokens, row) == len(expected)
            assert tokens.input_ids[row, :len(expected)].tolist() == expected


def test_completion_mask_covers_exactly_the_assistant_tokens(tokens: PreferenceTokens,
                                                             tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    """The completion is the assistant message's content and its end-of-turn token; the padding is out of both
    masks and right of every real token."""
    for row, text in enumerate(CHOSEN + REJECTED):
        scored = tokens.input_ids[row][tokens.completion_mask[row].bool()].tolist()
        assert tiny_tokenizer.convert_ids_to_tokens(scored) == [*text.split(), tiny_tokenizer.eos_token]
        length = int(tokens.attention_mask[row].sum())
        assert tokens.attention_mask[row, :length].all() and not tokens.attention_mask[row, length:].any()
        assert (tokens.input_ids[row, length:] == tiny_tokenizer.pad_token_id).all()
        last = int(tokens.completion_mask[row].nonzero()[-1])
        assert last == length - 1, "the completion runs to the end of the sequence"


def test_plain_text_rows_append_eos_to_the_completions(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    data = Dataset.from_dict({"prompt": ["what is two plus two"], "chosen": [" four"], "rejected": [" five <eos>"]})
    tokens = PreferenceMixer(data, tiny_tokenizer, batch_size=1).next_batch()
    prompt = tiny_tokenizer("what is two plus two")["input_ids"]
    for row, completion in enumerate((["four", "<eos>"], ["five", "<eos>"])):
        assert tokens.input_ids[row, :len(prompt)].tolist() == prompt
        scored = tokens.input_ids[row][tokens.completion_mask[row].bool()].tolist()
        assert tiny_tokenizer.convert_ids_to_tokens(scored) == completion


def test_a_prompt_rendered_differently_alone_is_cut_where_the_renderings_diverge(
        dataset: Dataset, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    """A template whose generation prompt ends with a token the full conversation lacks: both sides keep the
    common prefix as their prompt, the completion is the assistant content, and a warning says so."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("<assistant> {% endif %}",
                                                              "<assistant> the {% endif %}")
    with pytest.warns(UserWarning, match="4 of 4 preference rows: the tokenised prompt is not a prefix"):
        tokens = PreferenceMixer(dataset, tokenizer, batch_size=4, shuffle=False).next_batch()
    for row, text in enumerate(CHOSEN + REJECTED):
        prompt = chat_ids(tokenizer, list(PROMPTS[row % 4]), add_generation_prompt=True)
        assert tokens.input_ids[row, :prompt_length(tokens, row)].tolist() == prompt[:-1]
        scored = tokens.input_ids[row][tokens.completion_mask[row].bool()].tolist()
        assert tokenizer.convert_ids_to_tokens(scored) == [*text.split(), tokenizer.eos_token]


def test_max_length_truncates_completions_and_drops_prompts_that_fill_it(
        dataset: Dataset, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    prompt_lengths = [len(chat_ids(tiny_tokenizer, list(prompt), add_generation_prompt=True)) for prompt in PROMPTS]
    max_length = sorted(prompt_lengths)[-1]  # the longest prompt fills it: that pair is dropped
    with pytest.warns(UserWarning, match="dropped 1 of 4"):
        mixer = PreferenceMixer(dataset, tiny_tokenizer, batch_size=3, max_length=max_length, shuffle=False)
    assert len(mixer) == 3
    tokens = mixer.next_batch()
    assert tokens.indices == tuple(i for i in range(4) if prompt_lengths[i] < max_length)
    assert int(tokens.attention_mask.sum(-1).max()) <= max_length
    assert bool((tokens.completion_mask.sum(-1) >= 1).all())
    with pytest.raises(PreferenceDataError, match="every prompt .* fills max_length=3"):
        PreferenceMixer(dataset, tiny_tokenizer, batch_size=1, max_length=3)


# ---------------------------------------------------------------- validation

BAD_DATA_SETS = {
    "missing column": ({"prompt": [[{"role": "user", "content": "one"}]],
                        "chosen": [[{"role": "assistant", "content": "two"}]]},
                       r"no 'rejected' column \(columns: \['prompt', 'chosen'\]\); expected TRL's preference format"),
    "empty": ({"prompt": [], "chosen": [], "rejected": []}, "the preference data set is empty"),
    "non-list chosen": ({"prompt": [[{"role": "user", "content": "one"}]] * 2, "chosen": ["two", "three"],
                         "rejected": [[{"role": "assistant", "content": "six"}]] * 2},
                        r"row 0: 'chosen' is a str, not a non-empty list of chat messages; expected TRL's"),
    "empty completion": ({"prompt": [[{"role": "user", "content": "one"}]] * 2,
                          "chosen": [[{"role": "assistant", "content": "two"}], []],
                          "rejected": [[{"role": "assistant", "content": "six"}]] * 2},
                         r"row 1: 'chosen' is an empty list"),
    "user message in the completion": ({"prompt": [[{"role": "user", "content": "one"}]],
                                        "chosen": [[{"role": "assistant", "content": "two"}]],
                                        "rejected": [[{"role": "user", "content": "six"}]]},
                                       r"row 0: rejected\[0\] has role 'user'; only assistant messages"),
    "empty plain-text completion": ({"prompt": ["one"], "chosen": ["two"], "rejected": [""]},
                                    r"row 0: 'rejected' is an empty string"),
}


@pytest.mark.parametrize("case", list(BAD_DATA_SETS))
def test_bad_data_sets_fail_up_front_naming_the_problem(case: str, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    columns, message = BAD_DATA_SETS[case]
    with pytest.raises(PreferenceDataError, match=message):
        PreferenceMixer(Dataset.from_dict(columns), tiny_tokenizer, batch_size=1)


# ---------------------------------------------------------------- the cycle


def index_stream(mixer: PreferenceMixer, batches: int) -> list[int]:
    return [index for _ in range(batches) for index in mixer.next_batch().indices]


def test_cycle_reshuffles_every_epoch_deterministically_by_seed(dataset: Dataset,
                                                                tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    def stream(seed: int, shuffle: bool = True) -> list[int]:
        return index_stream(PreferenceMixer(dataset, tiny_tokenizer, batch_size=2, seed=seed, shuffle=shuffle), 8)

    first = stream(seed=3)
    assert first == stream(seed=3)
    epochs = [first[start:start + 4] for start in range(0, 16, 4)]
    assert all(sorted(epoch) == [0, 1, 2, 3] for epoch in epochs), "each epoch visits every pair once"
    assert len({tuple(epoch) for epoch in epochs}) > 1, "the order is redrawn every epoch"
    assert first != stream(seed=4)
    assert stream(seed=3, shuffle=False) == [0, 1, 2, 3] * 4


def test_a_batch_crossing_an_epoch_boundary_is_full(dataset: Dataset,
                                                     tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    mixer = PreferenceMixer(dataset, tiny_tokenizer, batch_size=3, seed=0)
    stream = index_stream(mixer, 4)
    assert mixer.cycle.epoch == 2
    assert [sorted(stream[start:start + 4]) for start in (0, 4, 8)] == [[0, 1, 2, 3]] * 3
    assert mixer.next_batch(device="cpu").input_ids.shape[0] == 6


# ---------------------------------------------------------------- log-probs


def manual_sequence_log_probs(model: torch.nn.Module, tokens: PreferenceTokens,
                              temperature: float) -> torch.Tensor:
    """Per row: the sum over completion positions t of log softmax(logits[t - 1] / T)[input_ids[t]]."""
    logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).logits
    sums = []
    for row in range(tokens.input_ids.shape[0]):
        total = torch.zeros((), dtype=torch.float32)
        for position in tokens.completion_mask[row].nonzero().flatten().tolist():
            log_probs = torch.log_softmax(logits[row, position - 1].float() / temperature, dim=-1)
            total = total + log_probs[tokens.input_ids[row, position]]
        sums.append(total)
    return torch.stack(sums)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_summed_log_probs_match_a_manual_per_token_computation(
        tokens: PreferenceTokens, tiny_tokenizer: PreTrainedTokenizerBase, temperature: float) -> None:
    model = build_model(tiny_tokenizer)
    chosen, rejected, chosen_lengths, rejected_lengths = sequence_log_probs(model, tokens, temperature)
    with torch.no_grad():
        expected = manual_sequence_log_probs(model, tokens, temperature)
    assert_close(torch.cat([chosen, rejected]).detach(), expected)
    assert chosen_lengths.tolist() == [len(text.split()) + 1 for text in CHOSEN]
    assert rejected_lengths.tolist() == [len(text.split()) + 1 for text in REJECTED]
    (chosen.sum() - rejected.sum()).backward()
    assert all(param.grad is not None for param in model.parameters())


def test_frozen_copy_reference_gives_log_2_at_init_and_moves_after_a_step(
        tokens: PreferenceTokens, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    policy = build_model(tiny_tokenizer)
    ref_model = copy.deepcopy(policy).eval().requires_grad_(False)
    batch = preference_batch(policy, tokens, ref_model)
    assert_close(batch.chosen_log_prob.detach(), batch.ref_chosen_log_prob)
    assert_close(batch.rejected_log_prob.detach(), batch.ref_rejected_log_prob)
    assert not batch.ref_chosen_log_prob.requires_grad and batch.chosen_log_prob.requires_grad
    assert_close(batch.delta.detach(), torch.zeros(tokens.num_pairs))
    loss = preference_loss(batch)
    assert_close(loss.detach(), torch.tensor(math.log(2)))
    loss.backward()
    torch.optim.SGD(policy.parameters(), lr=1.0).step()

    after = preference_batch(policy, tokens, ref_model)
    assert_close(after.ref_chosen_log_prob, batch.ref_chosen_log_prob)
    assert bool((after.chosen_log_prob - batch.chosen_log_prob).abs().min() > 1e-4)
    assert bool((after.delta > 0).all()), "one step on the DPO loss raises every chosen-minus-rejected margin"
    assert float(preference_loss(after).detach()) < math.log(2)


def test_without_a_reference_a_plain_model_is_an_error(tokens: PreferenceTokens,
                                                       tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ConfigError, match="needs a reference model: Qwen2ForCausalLM is not a PEFT model.*ref_model"):
        reference_log_probs(build_model(tiny_tokenizer), tokens)


def lora(model: torch.nn.Module) -> torch.nn.Module:
    """A LoRA whose B is not zero, so the adapted model differs from its base from the start."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, config)


def test_peft_reference_is_the_base_model_with_adapters_disabled(
        tokens: PreferenceTokens, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    base = build_model(tiny_tokenizer)
    with torch.no_grad():
        base_chosen, base_rejected, _, _ = sequence_log_probs(base, tokens)
    policy = lora(base)
    batch = preference_batch(policy, tokens)
    assert_close((batch.ref_chosen_log_prob, batch.ref_rejected_log_prob), (base_chosen, base_rejected))
    assert bool((batch.chosen_log_prob.detach() - base_chosen).abs().min() > 1e-4)
    preference_loss(batch).backward()
    trained = [name for name, param in policy.named_parameters() if param.grad is not None]
    assert trained and all("lora_" in name for name in trained)


def test_peft_reference_uses_a_ref_adapter_when_there_is_one(
        tokens: PreferenceTokens, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    """TRL's GRPOTrainer copies an existing adapter into one named "ref" to use as the reference."""
    policy = lora(build_model(tiny_tokenizer))
    policy.add_adapter("ref", policy.peft_config["default"])
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if ".default." in name:
                policy.get_parameter(name.replace(".default.", ".ref.")).copy_(param)
    initial = preference_batch(policy, tokens)
    assert_close(initial.delta.detach(), torch.zeros(tokens.num_pairs))
    preference_loss(initial).backward()
    torch.optim.SGD([param for param in policy.parameters() if param.requires_grad], lr=1.0).step()
    after = preference_batch(policy, tokens)
    assert policy.active_adapter == "default"
    assert_close(after.ref_chosen_log_prob, initial.ref_chosen_log_prob)
    assert bool((after.delta > 0).all())


# ---------------------------------------------------------------- TRL's DPOTrainer as an oracle


def test_tokens_and_log_probs_match_trl_dpo_trainer(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
                                                    tmp_path: Path) -> None:
    """TRL tokenises the same conversational rows into the same padded batch (chosen rows first), and its own
    forward gives the same summed completion log-probs."""
    data = Dataset.from_dict(conversational_rows())
    args = DPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none",
                     per_device_train_batch_size=len(PROMPTS))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tiny_tokenizer)
    expected = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PROMPTS))])
    tokens = PreferenceMixer(data, tiny_tokenizer, batch_size=len(PROMPTS), shuffle=False).next_batch()
    for name in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(tokens, name), expected[name]), name
    with torch.no_grad():
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.model, expected)
        chosen, rejected, _, _ = sequence_log_probs(trainer.model, tokens)
    assert_close((chosen, rejected), (trl_chosen, trl_rejected))
