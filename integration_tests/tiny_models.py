"""Tiny causal LMs and tokenizers built locally (no hub access), shared by the backend integration tests.

The tokenizer is a word-level vocabulary with pad/eos/bos tokens and a minimal chat template; the model is a
two-layer Qwen2 with a 32-wide hidden state. Both are deterministic for a given seed and build in well under
a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<user>", "<assistant>", "<system>")
WORDS = (
    "the", "a", "an", "is", "are", "was", "be", "to", "of", "and", "in", "on", "for", "with", "as", "at", "by",
    "it", "this", "that", "yes", "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "add", "plus", "minus", "times", "answer", "question", "solve", "what", "how", "why", "when", "which",
    "number", "sum", "result", "correct", "wrong", "tool", "call", "error", "fix", "file", "read", "write", "run",
    "test", "pass", "fail",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over a fixed small vocabulary (vocabulary size about 90)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised two-layer Qwen2 causal LM sized to the tokenizer, in float32 and train mode."""
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.train()


def save_tiny(directory: Path, seed: int = 0) -> Path:
    """Save a tiny model and its tokenizer to `directory` (for trainers that load a reference model by path)."""
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
