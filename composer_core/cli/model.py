"""`composer-core model convert`: a GGUF model converted once into a safetensors folder for from_pretrained."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from composer_core.errors import ConfigError
from composer_core.models import classify_model_path


def convert_command(args: argparse.Namespace) -> int:
    """Convert into --out, or into the cache that `model.path=FILE.gguf` reads; print the folder."""
    from composer_core.models.gguf import cached_conversion, convert_gguf

    source = classify_model_path(args.file)
    if source.kind != "gguf":
        raise ConfigError(f"{args.file} is not a GGUF file (nor a folder holding one)")
    gguf = Path(source.location)
    if args.out is None:
        print(cached_conversion(gguf))
        return 0
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new folder")
    print(convert_gguf(gguf, out))
    return 0


def add_model_commands(commands: Any) -> None:
    model = commands.add_parser("model", help="prepare a model for training (GGUF conversion)")
    actions = model.add_subparsers(dest="action", required=True)
    convert = actions.add_parser("convert", help="convert a GGUF file into a safetensors model folder (by default "
                                                 "into the cache that model.path=FILE.gguf reads, so training "
                                                 "starts without converting)")
    convert.add_argument("file", metavar="FILE.gguf", help="a GGUF model file, or a folder holding exactly one")
    convert.add_argument("--out", help="write the folder here instead of the cache ($COMPOSER_CORE_CACHE, default "
                                       "~/.cache/composer-core)")
    convert.set_defaults(run=convert_command)
