"""LoRA through PEFT in the environment with every extra: torchtune's torchao 0.15 installed beside PEFT 0.21."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from packaging.version import Version

pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model

import composer_trl.lora  # noqa: F401  (applies the check)
from composer_trl.peft_torchao import _tolerant


def test_a_lora_model_builds_with_the_torchao_torchtune_needs() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    wrapped = get_peft_model(model, LoraConfig(target_modules=["0"], r=2))
    assert any("lora_A" in name for name, _ in wrapped.named_parameters())


def test_the_environment_holds_the_torchao_that_made_peft_refuse() -> None:
    """`make test` installs the torchtune extra, so the case above is the conflicting one, not a lucky one."""
    pytest.importorskip("torchtune")
    assert Version(importlib.metadata.version("torchao")) < Version("0.16")


def test_the_tolerant_check_keeps_peft_answers_and_turns_its_refusal_into_no() -> None:
    def refuses() -> bool:
        raise ImportError("Found an incompatible version of torchao")

    assert _tolerant(lambda: True)() is True
    assert _tolerant(lambda: False)() is False
    assert _tolerant(refuses)() is False
