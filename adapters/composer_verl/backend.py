"""Registers VeRL as the `verl` backend of `composer-core train` (through the `composer_core` entry point).

VeRL jobs run on a Ray GPU cluster from VeRL's own launcher, so this backend prints the hydra overrides that
carry a ComposerConfig into an existing job rather than launching one from here.
"""

from __future__ import annotations

from typing import Any

from composer_core.backends import Backend
from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.plugins import Register, hookimpl
from composer_verl.overrides import render


def _train(config: ComposerConfig, **options: Any) -> dict[str, Any]:
    raise ConfigError("the verl backend trains through VeRL's own launcher on a Ray GPU cluster: run "
                      "`composer-core train --backend verl --print-backend-config` (add --with-run-settings for the "
                      "config's model, data, reward and run settings) and append the printed overrides to "
                      "`python -m verl.trainer.main_ppo ...` (docs/backends/verl.md)")


@hookimpl
def register_backends(register: Register) -> None:
    register(Backend("verl", "VeRL 0.9 through its plugin entry point: composer_* loss modes and estimators, "
                     "and the composer trainer for self-distillation", _train, render))
