"""Registers TRL as the `trl` backend of `composer-core train` (through the `composer_core` entry point).

TRL is imported only when a job runs, so composer-core keeps working where the `trl` extra is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from composer_core.backends import Backend
from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.plugins import Register, hookimpl


def _train(config: ComposerConfig, **options: Any) -> dict[str, Any]:
    try:
        from composer_trl.run import run_job  # imports TRL
    except ImportError as error:
        raise ConfigError(f"the trl backend needs TRL: pip install 'composer-core[trl]' ({error})") from None
    return run_job(config, **options)


def _default_model() -> Path:
    from composer_trl.defaults import EMBEDDED_MODEL  # a path only: no TRL import

    return EMBEDDED_MODEL


def _native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    from composer_trl.trl_settings import native_config

    return native_config(config, run_settings=run_settings)


@hookimpl
def register_backends(register: Register) -> None:
    register(Backend("trl", "TRL's GRPOTrainer with the composer loss (the embedded default runs on CPU)",
                     _train, _native_config, _default_model))
