"""A saved model folder (`model.path`) checked before training: every problem is a ConfigError naming the folder.

transformers reports a broken folder with a raw OSError / ValueError / SafetensorError from deep inside
`from_pretrained`, and silently builds a one-token tokenizer when the tokenizer files are missing; the checks
here say what is wrong and what the folder needs instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import transformers
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from composer_core.documents import load_document
from composer_core.errors import ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, SafetensorError,
               pickle.UnpicklingError)
NEEDS = "a saved model folder needs config.json, weights (model.safetensors) and tokenizer files (tokenizer.json)"


def check_model_folder(path: Path) -> Path:
    """`path` if it looks like a loadable causal-LM folder (cheap checks, no weights read)."""
    if not path.is_dir():
        raise ConfigError(f"model.path {path} is not a folder; {NEEDS}")
    if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
        raise ConfigError(f"model.path {path} holds a LoRA adapter, not a model; give the merged model folder (a "
                          "LoRA run writes one in final/) or the base model with model.lora set")
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path {path} has no config.json; {NEEDS}")
    settings = load_document(path / "config.json", what="model config")
    if not isinstance(settings, dict) or not isinstance(settings.get("model_type"), str):
        raise ConfigError(f"{path / 'config.json'} has no model_type; is it a transformers model config?")
    try:
        AutoConfig.from_pretrained(path)
    except LOAD_ERRORS:
        raise ConfigError(f"{path / 'config.json'}: model_type {settings['model_type']!r} is not known to "
                          f"transformers {transformers.__version__}; use a supported model or upgrade "
                          "transformers") from None
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"model.path {path} has no weights (none of {', '.join(WEIGHT_FILES)}); {NEEDS}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"model.path {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the "
                          "tokenizer beside the model (tokenizer.save_pretrained)")
    return path


def load_model(path: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    """The model and tokenizer of a checked folder; a file that does not load is a ConfigError naming it."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except LOAD_ERRORS as error:
        raise ConfigError(f"cannot load the model in {path}: {type(error).__name__}: {error}") from None
    if tokenizer.pad_token is None:  # batched generation pads; the end-of-text token is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ConfigError(f"the tokenizer in {path} has {len(tokenizer)} tokens but the model embeds only "
                          f"{model.get_input_embeddings().num_embeddings}; they do not belong together")
    return model, tokenizer
