"""model.path as a folder, a GGUF file, a folder holding one, or a hub model id; and model.lora through TRL's own
peft_config path, saved as a merged model plus the adapter, resumed with the adapter's weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from composer_core.config import DEFAULT_JOB, ComposerConfig, LoraConfig
from composer_core.errors import ConfigError
from composer_core.models import classify_model_path
from composer_trl.defaults import EMBEDDED_MODEL
from composer_trl.lora import lora_peft_config
from composer_trl.model_folder import check_model_folder, load_model
from composer_trl.run import run_job
from composer_trl.trainer import ComposerGRPOTrainer

TINY_RUN = ["run.prompts_per_step=2", "run.num_generations=2", "run.max_completion_length=8", "data.eval_size=2"]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, **(env or {})}, cwd=cwd)


# ---- what model.path names ----------------------------------------------------------------------------------------

def test_the_kinds_of_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"GGUF")
    assert classify_model_path(str(EMBEDDED_MODEL)).kind == "folder"
    assert classify_model_path("one") == classify_model_path("one/m.gguf")
    assert classify_model_path("one").kind == "gguf"
    assert classify_model_path("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(ConfigError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\); set model.path to the one"):
        classify_model_path("two")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file but not a .gguf model"):
        classify_model_path("weights.bin")
    for missing in ("./no/such/folder", "missing.gguf"):
        with pytest.raises(ConfigError, match=f"model.path {missing} does not exist"):
            classify_model_path(missing)


def test_a_lora_adapter_folder_is_not_taken_for_a_model(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a LoRA adapter, not a model"):
        check_model_folder(tmp_path)


def test_a_hub_id_offline_is_one_clear_line(tmp_path: Path) -> None:
    result = cli("train", "model.path=composer-test/not-cached", "--output-dir", str(tmp_path / "run"),
                 env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("composer-core: error:")]
    assert len(error) == 1 and "'composer-test/not-cached'" in error[0]
    assert "needs network access" in error[0] and "set model.path to that folder" in error[0]
    assert not (tmp_path / "run").exists()


def test_a_hub_id_resolves_through_huggingface_hub(tmp_path: Path) -> None:
    """A model in huggingface_hub's cache layout (what a download leaves) is found by its id, offline."""
    repo = tmp_path / "hub" / "models--composer-test--embedded"
    shutil.copytree(EMBEDDED_MODEL, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    result = subprocess.run([sys.executable, "-c", "from composer_core.models import resolve_model_folder; "
                             "print(resolve_model_folder('composer-test/embedded'))"], capture_output=True, text=True,
                            timeout=120, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                          "HF_HUB_CACHE": str(tmp_path / "hub")})
    folder = Path(result.stdout.strip())
    assert folder == repo / "snapshots" / "0123abcd"
    model, tokenizer = load_model(check_model_folder(folder))
    assert model.config.model_type == "qwen2" and tokenizer.chat_template is not None


# ---- LoRA ---------------------------------------------------------------------------------------------------------

def test_lora_target_modules_are_checked_against_the_model() -> None:
    model, _ = load_model(EMBEDDED_MODEL)
    assert lora_peft_config(None, model) is None
    config = lora_peft_config(LoraConfig(r=2, target_modules=["q_proj", "self_attn.v_proj"]), model)
    assert set(config.target_modules) == {"q_proj", "self_attn.v_proj"} and config.r == 2
    with pytest.raises(ConfigError, match=r"'qproj' names no module in this model; its adaptable layers are .*q_proj"):
        lora_peft_config(LoraConfig(target_modules=["qproj"]), model)
    with pytest.raises(ConfigError, match="'input_layernorm' names only Qwen2RMSNorm modules, which LoRA cannot adapt"):
        lora_peft_config(LoraConfig(target_modules=["input_layernorm"]), model)


def test_lora_trains_only_the_adapter_and_saves_a_loadable_model(tmp_path: Path) -> None:
    """Two steps with self-distillation (the default job: an EMA teacher adapter beside the student's): the merged
    final model differs from the embedded one only in the adapted layers, equals base + saved adapter, and a resumed
    run continues from the checkpoint's adapter."""
    out = tmp_path / "run"
    lora = ["model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]", "model.lora.dropout=0"]
    config = ComposerConfig.from_mapping(DEFAULT_JOB, overrides=[*TINY_RUN, *lora, "run.max_steps=2"])
    assert run_job(config, output_dir=str(out))["steps"] == 2  # what `composer-core train` runs
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(row["composer/distill/tokens"] > 0 for row in metrics if "loss" in row)

    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "composer_teacher").exists()
    adapter = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".q_proj." in name or ".v_proj." in name for name in adapter)
    assert any(tensor.abs().max() > 0 for name, tensor in adapter.items() if "lora_B" in name)  # B starts at 0

    base, merged = load_file(EMBEDDED_MODEL / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert set(merged) == set(base)
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)

    model, tokenizer = load_model(check_model_folder(out / "final"))
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL),
                                             out / "final" / "adapter").eval()
    ids = tokenizer("<|user|>12+7=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-5)

    # resuming (TRL's own resume_from_checkpoint; no step is left) restores the student adapter from the checkpoint
    trainer = ComposerGRPOTrainer.from_config(config, output_dir=str(tmp_path / "resumed"))
    trainer.train(resume_from_checkpoint=str(checkpoint))
    saved = load_file(checkpoint / "adapter_model.safetensors")
    restored = {name.replace(".default.", "."): parameter for name, parameter in trainer.model.named_parameters()
                if ".default." in name}
    assert set(restored) == set(saved)
    assert all(torch.equal(restored[name], saved[name]) for name in saved)
