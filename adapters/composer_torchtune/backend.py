"""Registers torchtune as the `torchtune` backend of `composer-core train` (through the `composer_core` entry
point `torchtune = "composer_torchtune.backend"`).

torchtune is imported only when a job runs, so composer-core keeps working where the `torchtune` extra is missing.
"""

from __future__ import annotations

from typing import Any

from composer_core.backends import Backend
from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.plugins import Register, hookimpl


def _train(config: ComposerConfig, **options: Any) -> dict[str, Any]:
    try:
        import torchtune  # noqa: F401  (only to say what is missing)
    except ImportError as error:
        raise ConfigError(f"the torchtune backend needs torchtune: pip install 'composer-core[torchtune]' ({error})"
                          ) from None
    from composer_torchtune.run import run_job

    return run_job(config, **options)


def _native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    from composer_torchtune.native_config import native_config

    return native_config(config, run_settings=run_settings)


@hookimpl
def register_backends(register: Register) -> None:
    register(Backend("torchtune", "the composer GRPO recipe through `tune run` (the embedded default runs on CPU)",
                     _train, _native_config))
