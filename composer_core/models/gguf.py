"""A GGUF model converted once into a safetensors folder, so that every later run loads in a second.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=name)`, for model and tokenizer) by
dequantising every tensor to float32, which takes tens of seconds even for a small model. The conversion is kept
in a cache folder, `$COMPOSER_CORE_CACHE/models/<stem>-<key>` (default cache: `~/.cache/composer-core`, or
`$XDG_CACHE_HOME/composer-core`), whose key hashes the file's absolute path, size and modification time: a changed
file converts again. The folder appears only once complete (atomic_directory), and a lock file lets one process
convert while the others wait for it.

transformers 5 reads the special tokens of a GPT-2-style (BPE) GGUF tokenizer wrongly (its eos token is the bos
token: for SmolLM2, `<|im_start|>` instead of `<|im_end|>`, so generation would never stop at the end of a
turn). The conversion sets bos, eos, pad and unk from the GGUF file's own metadata and records what it changed in
the folder's `source.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError
from composer_core.files import atomic_directory, check_input, write_text_atomic

CACHE_ENV = "COMPOSER_CORE_CACHE"
SOURCE_RECORD = "source.json"  # written last into the folder: what it was converted from
LOCK_WAIT_S = 1800.0  # a large model's conversion by another process takes minutes
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, AttributeError)
SPECIAL_TOKEN_KEYS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id",
                      "pad_token": "tokenizer.ggml.padding_token_id", "unk_token": "tokenizer.ggml.unknown_token_id"}


def cache_root() -> Path:
    """The composer-core cache folder: $COMPOSER_CORE_CACHE, else $XDG_CACHE_HOME/composer-core or
    ~/.cache/composer-core."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "composer-core"


def cache_folder(file: Path) -> Path:
    """Where the conversion of `file` is cached: named by its stem and a hash of its absolute path, size and
    modification time."""
    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{file.stem}-{key}"


def cached_conversion(file: Path) -> Path:
    """The cached safetensors folder of GGUF `file`, converted now (once, under a lock) when it is missing."""
    check_input(file, "GGUF model file")
    folder = cache_folder(file)
    if (folder / SOURCE_RECORD).is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the model cache {folder.parent}: {error.strerror or error}; set "
                          f"{CACHE_ENV} to a writable folder") from None
    with _conversion_lock(folder.with_name(f"{folder.name}.lock"), file):
        if not (folder / SOURCE_RECORD).is_file():  # another process may have converted it while this one waited
            print(f"converting {file} into the safetensors folder {folder} (once: later runs load that folder)",
                  file=sys.stderr)
            convert_gguf(file, folder)
    return folder


def convert_gguf(file: Path, out: Path) -> Path:
    """Read GGUF `file` with transformers and save model and tokenizer as a folder `out` for from_pretrained."""
    check_input(file, "GGUF model file")
    model, tokenizer = _read_gguf(file)
    corrected = _set_special_tokens(tokenizer, _gguf_special_token_ids(file))
    stat = file.stat()
    record = {"gguf": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "special_tokens_set_from_gguf": corrected}
    with atomic_directory(out, inputs=[file], what="converted model folder") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_text_atomic(staging / SOURCE_RECORD, json.dumps(record, indent=2), what="conversion record")
    return out


def _read_gguf(file: Path) -> tuple[Any, Any]:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model.path {file} is a GGUF file, and reading one needs the gguf package: pip install "
                          "'composer-core[trl]' (or pip install gguf)")
    try:  # transformers is not a core dependency (the trl extra): imported only when a GGUF file is converted
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ConfigError(f"reading the GGUF file {file} needs transformers: pip install 'composer-core[trl]'") \
            from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name)
    except LOAD_ERRORS as error:
        raise ConfigError(f"cannot read the GGUF model {file}: {type(error).__name__}: {error}") from None
    return model, tokenizer


def _gguf_special_token_ids(file: Path) -> dict[str, int]:
    """The special token ids the GGUF file's own metadata declares (those it has)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(file)
    except LOAD_ERRORS as error:
        raise ConfigError(f"cannot read the metadata of the GGUF file {file}: {type(error).__name__}: "
                          f"{error}") from None
    ids = {}
    for name, key in SPECIAL_TOKEN_KEYS.items():
        field = reader.get_field(key)
        if field is not None:
            ids[name] = int(field.contents())
    return ids


def _set_special_tokens(tokenizer: Any, ids: dict[str, int]) -> dict[str, dict[str, str | None]]:
    """Set the tokenizer's special tokens to the GGUF's ids; returns {name: {"read": old, "set": new}} for those
    that differed."""
    corrected = {}
    for name, token_id in ids.items():
        if not 0 <= token_id < len(tokenizer):
            continue  # a GGUF may declare a padding id outside the vocabulary; transformers' choice stays
        token = tokenizer.convert_ids_to_tokens(token_id)
        if getattr(tokenizer, name) != token:
            corrected[name] = {"read": getattr(tokenizer, name), "set": token}
            setattr(tokenizer, name, token)
    return corrected


@contextlib.contextmanager
def _conversion_lock(lock: Path, file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock` (released by the system if this process dies); waits at most LOCK_WAIT_S
    for another process converting the same file, saying so."""
    import fcntl

    with lock.open("a") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"another process has been converting {file} for over {LOCK_WAIT_S:.0f} s "
                                      f"(lock {lock}); let it finish or stop it, then retry") from None
                if not waiting:
                    print(f"waiting for another process converting {file} (lock {lock})", file=sys.stderr)
                    waiting = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
