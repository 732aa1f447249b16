"""LoRA from `model.lora`: TRL's GRPOTrainer wraps the model through peft (its `peft_config` argument), and the
trained model is saved both ways a user needs it.

Only the adapter trains: the base weights stay frozen, and the self-distillation teacher shares them (a second
adapter for `ema`, the base with adapters disabled for `frozen`; composer_trl.teacher_weights). The final folder
holds the merged model (config.json + model.safetensors: loads anywhere `from_pretrained` does, and as
`model.path` of a later run) and, in `adapter/`, the student adapter alone (adapter_config.json +
adapter_model.safetensors, for `PeftModel.from_pretrained(base, folder)`). Merging works on a copy, so the
trainer's model is left as it was; that copy briefly doubles the model's memory.

Checkpoints hold the student adapter only: the EMA teacher's adapter is saved in composer_state.pt, and once a
checkpoint has an adapter subfolder, transformers' resume loads the subfolders only and silently leaves the
student adapter at its initial weights.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from composer_core.config import LoraConfig
from composer_core.errors import ConfigError
from composer_trl.peft_torchao import peft_ignores_old_torchao
from composer_trl.teacher_weights import is_peft_model

peft_ignores_old_torchao()  # TRL builds LoRA models through PEFT, which refuses torchtune's torchao otherwise
ADAPTER_FOLDER = "adapter"
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, Conv1D)  # layer types peft's LoRA adapts


def lora_peft_config(lora: LoraConfig | None, model: nn.Module) -> Any:
    """peft's LoraConfig for `model.lora` (None: no LoRA), after checking that every named target module exists in
    `model` as a layer LoRA can adapt."""
    if lora is None:
        return None
    from peft import LoraConfig as PeftLoraConfig

    if lora.target_modules != "all-linear":
        check_target_modules(model, lora.target_modules)
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, task_type="CAUSAL_LM")


def check_target_modules(model: nn.Module, targets: list[str]) -> None:
    """Each target names (as peft matches a list: the full name or its last dotted parts) an adaptable layer."""
    modules = dict(model.named_modules())
    adaptable = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items() if isinstance(module, ADAPTABLE)})
    for target in targets:
        matches = [module for name, module in modules.items() if name == target or name.endswith(f".{target}")]
        if not any(isinstance(module, ADAPTABLE) for module in matches):
            what = "no module" if not matches else f"only {type(matches[0]).__name__} modules, which LoRA cannot adapt,"
            raise ConfigError(f"model.lora.target_modules: {target!r} names {what} in this model; its adaptable "
                              f"layers are {', '.join(adaptable)} (or use 'all-linear')")


def save_trained_model(trainer: Any, folder: Path) -> None:
    """The trained model into `folder`: as TRL saves it, or for a LoRA run the merged model plus `adapter/`."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft_model(model):
        trainer.save_model(str(folder))
        return
    adapter = model.active_adapter
    model.save_pretrained(folder / ADAPTER_FOLDER, selected_adapters=[adapter])
    copy.deepcopy(model).merge_and_unload(adapter_names=[adapter]).save_pretrained(folder)


@contextlib.contextmanager
def student_adapter_only(model: nn.Module) -> Iterator[None]:
    """While the block runs, `model.save_pretrained` of a PEFT model with several adapters writes the active one only
    (the instance's method is shadowed, then restored)."""
    if not is_peft_model(model) or len(model.peft_config) == 1:
        yield
        return
    model.save_pretrained = functools.partial(type(model).save_pretrained, model,
                                              selected_adapters=[model.active_adapter])
    try:
        yield
    finally:
        del model.save_pretrained
