"""PEFT beside torchtune's torchao: one environment for every extra.

torchtune 0.6.1 imports only with torchao 0.15. PEFT 0.21 raises ImportError from `is_torchao_available` whenever
an older torchao is installed, asked for every LoRA layer, even for models torchao never touched; so with both
extras installed no LoRA model could be built. For PEFT a torchao it cannot use is no torchao: here the check
answers False instead of raising. It changes nothing when torchao is absent or recent enough.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

PEFT_MODULES = ("peft.import_utils", "peft.tuners.lora.torchao", "peft.utils.quantization_utils")


def peft_ignores_old_torchao() -> None:
    """Replace PEFT's torchao check, in every PEFT module that imported it, by one that answers False where
    PEFT would raise for an unsupported torchao version (idempotent)."""
    import importlib

    import peft.import_utils

    original = peft.import_utils.is_torchao_available
    if getattr(original, "tolerates_old_torchao", False):
        return
    checked = _tolerant(original)
    for name in PEFT_MODULES:
        module = sys.modules.get(name) or importlib.import_module(name)
        if getattr(module, "is_torchao_available", None) is original:
            module.is_torchao_available = checked


def _tolerant(check: Callable[[], bool]) -> Callable[[], bool]:
    def is_torchao_available() -> bool:
        try:
            return check()
        except ImportError:  # PEFT's "Found an incompatible version of torchao": it cannot use this torchao
            return False

    is_torchao_available.tolerates_old_torchao = True  # type: ignore[attr-defined]
    return is_torchao_available
