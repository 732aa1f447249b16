"""A torchtune tokenizer for a Hugging Face model folder that also renders chat messages with its chat template.

torchtune's `HuggingFaceBaseTokenizer` encodes text with the folder's tokenizer.json but knows no chat format, and
its model tokenizers (Qwen2, Llama3) hard-code their vendors' formats. The composer recipe needs the folder's own
format, for the student's prompts and the self-distillation teacher's rewritten ones alike, so this class renders
messages with the folder's Jinja chat template (as `transformers` does, in a sandbox) and encodes the text with
special tokens parsed as such.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer

from composer_core.errors import ConfigError

Message = dict[str, Any]


class ChatTokenizer:
    """Encode chat prompts and decode completions for the model folder `path`."""

    def __init__(self, path: str) -> None:
        folder = Path(path)
        self.base = HuggingFaceBaseTokenizer(str(folder / "tokenizer.json"),
                                             tokenizer_config_json_path=str(folder / "tokenizer_config.json"),
                                             generation_config_path=str(folder / "generation_config.json"))
        self.settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            chat_template(folder, self.settings))
        pad = self.settings.get("pad_token")
        self.pad_id = self.base.tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        if self.pad_id is None:
            raise ConfigError(f"model folder {folder}: tokenizer_config.json names no pad_token the tokenizer knows")
        self.eos_id = self.base.eos_id
        self.stop_tokens = [self.eos_id]

    def render(self, messages: Sequence[Message]) -> str:
        """The chat-template text of `messages` with the generation prompt (the assistant header) appended."""
        return self.template.render(messages=list(messages), add_generation_prompt=True,
                                    bos_token=self.settings.get("bos_token", ""),
                                    eos_token=self.settings.get("eos_token", ""), raise_exception=_raise)

    def encode_messages(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the rendered prompt; the template writes the special tokens, none is added."""
        return self.base.encode(self.render(messages), add_bos=False, add_eos=False)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` without special tokens."""
        return self.base.tokenizer.decode(list(ids), skip_special_tokens=True)


def chat_template(folder: Path, settings: dict[str, Any]) -> str:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's `chat_template`."""
    path = folder / "chat_template.jinja"
    template = path.read_text(encoding="utf-8") if path.is_file() else settings.get("chat_template")
    if not isinstance(template, str):
        raise ConfigError(f"model folder {folder} has no chat template (chat_template.jinja or tokenizer_config.json "
                          "chat_template): the recipe renders chat prompts with it")
    return template


def _raise(message: str) -> None:
    raise ConfigError(f"chat template: {message}")
