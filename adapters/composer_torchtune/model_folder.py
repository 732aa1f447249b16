"""A Hugging Face model folder seen by torchtune: the component builder and checkpointer settings it maps to.

torchtune builds a model from a component builder with explicit sizes and loads Hugging Face weights through
`FullModelHFCheckpointer`, which converts them for the model types it knows. This module reads a folder's
`config.json` and gives those settings, so the YAML names sizes torchtune-style instead of a folder to guess from.
The embedded default model (a tiny Qwen2) ships inside the `composer_trl` package folder of the same
distribution; it is located by path, without importing that adapter.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError

# Hugging Face model_type -> (torchtune component builder, checkpointer model_type)
BUILDERS = {"qwen2": ("torchtune.models.qwen2.qwen2", "QWEN2")}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def embedded_model() -> Path:
    """The embedded default model folder (package data of `composer_trl`, found without importing it)."""
    spec = importlib.util.find_spec("composer_trl")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded default model ships in the composer_trl package folder, which is not "
                          "installed: reinstall composer-core, or set model.path")
    return Path(next(iter(spec.submodule_search_locations))) / "embedded" / "model"


def hf_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to name a model type torchtune can build here."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"model folder {folder} has no config.json: torchtune needs a Hugging Face model folder")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_type") not in BUILDERS:
        raise ConfigError(f"model folder {folder}: model_type {config.get('model_type')!r} is not supported by the "
                          f"torchtune backend (supported: {', '.join(BUILDERS)}); use the trl backend for it")
    return config


def model_section(folder: Path) -> dict[str, Any]:
    """The YAML `model:` mapping: the component builder with the folder's sizes."""
    config = hf_config(folder)
    builder, _ = BUILDERS[config["model_type"]]
    rope = config.get("rope_parameters") or {}
    return {"_component_": builder, "vocab_size": config["vocab_size"], "num_layers": config["num_hidden_layers"],
            "num_heads": config["num_attention_heads"], "num_kv_heads": config["num_key_value_heads"],
            "embed_dim": config["hidden_size"], "intermediate_dim": config["intermediate_size"],
            "max_seq_len": config["max_position_embeddings"], "norm_eps": config["rms_norm_eps"],
            "rope_base": float(rope.get("rope_theta", config.get("rope_theta", 1_000_000.0))),
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False))}


def checkpointer_section(folder: Path, output_dir: str) -> dict[str, Any]:
    """The YAML `checkpointer:` mapping: torchtune's Hugging Face checkpointer over the folder's weight files."""
    config = hf_config(folder)
    files = sorted(path.name for path in folder.iterdir() if path.suffix in WEIGHT_SUFFIXES
                   and path.name != "training_args.bin")
    if not files:
        raise ConfigError(f"model folder {folder} has no .safetensors or .bin weights")
    return {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(folder),
            "checkpoint_files": files, "model_type": BUILDERS[config["model_type"]][1], "output_dir": output_dir}
