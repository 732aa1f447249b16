"""`LocalHFTeacher`: a replay teacher that is a local Hugging Face causal LM (cost 0).

transformers is imported when a local teacher is made, under a process-wide lock, so that steps replayed
concurrently never race on its lazy imports; each model folder is loaded once and shared.
"""

from __future__ import annotations

import asyncio
import numbers
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer_core.errors import ConfigError, TeacherError
from composer_core.traces.formats import parse_arguments

if TYPE_CHECKING:
    pass

from composer_core.replay.teachers import Teacher, TeacherReply, valid_amount, valid_integer

_LOCAL_LOCK = threading.Lock()  # transformers' lazy imports, from_pretrained and torch's seeded RNG are process-wide
_LOADED: weakref.WeakValueDictionary[tuple[str, ...], Any] = weakref.WeakValueDictionary()


class LocalHFTeacher(Teacher):
    """A local Hugging Face causal LM: a folder with weights and a tokenizer that has a chat template (or the
    tokenizer in its own folder, `tokenizer_path`).

    Greedy when temperature is 0, else sampled with a fixed seed, so the same prefix gives the same answer.
    The answer is plain text (tool calls are not parsed out of it); cost is 0. transformers is imported when
    the teacher is made (its lazy imports are not thread-safe); the model is loaded once per process and
    folder, shared by the teachers that name it, and generation runs in a worker thread, one local
    generation at a time in the process (loading is not thread-safe and the seeded RNG is global).
    """

    def __init__(self, name: str, path: str | os.PathLike[str], *, tokenizer_path: str | os.PathLike[str] | None = None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 device: str = "cpu") -> None:
        self.name = name
        self.path = os.fspath(path)
        self.tokenizer_path = os.fspath(tokenizer_path or path)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.device = device
        self._check_settings()
        self._auto_model, self._auto_tokenizer = _import_transformers(name)
        self._model: Any = None
        self._tokenizer: Any = None

    def _check_settings(self) -> None:
        problems = [f"{field} {folder} is not a folder; give the folder of a saved model"
                    for field, folder in (("path", self.path), ("tokenizer_path", self.tokenizer_path))
                    if not Path(folder).is_dir()]
        if not (valid_integer(self.max_new_tokens) and self.max_new_tokens >= 1):
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not valid_amount(self.temperature):
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, numbers.Real) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not valid_integer(self.seed):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if problems:
            raise ConfigError(f"teacher {self.name!r}: " + "; ".join(problems))

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.path,
                "params": {"tokenizer": self.tokenizer_path, "max_new_tokens": self.max_new_tokens,
                           "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}}

    async def complete(self, messages: list[dict[str, Any]]) -> TeacherReply:
        return await asyncio.to_thread(self._generate, messages)

    def _generate(self, messages: list[dict[str, Any]]) -> TeacherReply:
        import torch

        started = time.perf_counter()
        with _LOCAL_LOCK:
            model, tokenizer = self._load()
            inputs = tokenizer.apply_chat_template([_template_message(m) for m in messages], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True, return_tensors="pt")
            inputs = {key: value.to(self.device) for key, value in inputs.items()}
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} \
                if self.temperature > 0 else {"do_sample": False}
            torch.manual_seed(self.seed)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id, **sampling)
        prompt_tokens = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_tokens:]
        return TeacherReply(content=tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
                            prompt_tokens=prompt_tokens, completion_tokens=int(new_tokens.numel()),
                            latency_s=time.perf_counter() - started)

    def _load(self) -> tuple[Any, Any]:
        """The model and tokenizer, loaded on first use (the caller holds _LOCAL_LOCK)."""
        if self._model is None:
            self._tokenizer = self._shared(("tokenizer", self.tokenizer_path),
                                           lambda: self._auto_tokenizer.from_pretrained(self.tokenizer_path))
            self._model = self._shared(("model", self.path, self.device),
                                       lambda: self._auto_model.from_pretrained(self.path).to(self.device).eval())
        return self._model, self._tokenizer

    def _shared(self, key: tuple[str, ...], load: Callable[[], Any]) -> Any:
        """What `load` gives, made once per process while some teacher still holds it."""
        loaded = _LOADED.get(key)
        if loaded is None:
            try:
                loaded = load()
            except (OSError, ValueError, RuntimeError) as error:
                raise TeacherError(f"teacher {self.name!r}: cannot load the {key[0]} from {key[1]}: "
                                   f"{type(error).__name__}: {error}", teacher=self.name) from error
            _LOADED[key] = loaded
        return loaded


def _import_transformers(teacher: str) -> tuple[Any, Any]:
    """transformers' auto classes, imported under the lock before any worker thread can race on them. transformers
    is not a core dependency (the replay extra): it is imported here, only when a local teacher is made."""
    with _LOCAL_LOCK:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as error:
            raise ConfigError(f"teacher {teacher!r} (local_hf) needs transformers ({error}): install "
                              "composer-core[replay]") from None
    return AutoModelForCausalLM, AutoTokenizer


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """Chat templates expect tool-call arguments as objects, not the JSON text the wire format carries."""
    if not message.get("tool_calls"):
        return message
    calls = [{**call, "function": {**call["function"], "arguments": parse_arguments(call["function"]["arguments"])}}
             for call in message["tool_calls"]]
    return {**message, "tool_calls": calls}
