"""Registers the DiLoCo outer loop on torchft as the `diloco` backend of `composer-core train` (entry point
`diloco = "composer_diloco.backend"`).

Two ways to run it: `--lighthouse URL --replica-id N` trains one replica in this process, joining a Lighthouse that
runs elsewhere (one command per cluster); `--replicas N` starts a Lighthouse and N replica processes on this machine
(composer_diloco.launcher). torchft is imported only when a job runs.
"""

from __future__ import annotations

from typing import Any

from composer_core.backends import Backend
from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.plugins import Register, hookimpl


def _check_torchft() -> None:
    try:
        import torchft  # noqa: F401  (only to say what is missing)
    except ImportError as error:
        raise ConfigError(f"the diloco backend needs torchft: pip install 'composer-core[diloco]' ({error})") from None


def _train(config: ComposerConfig, *, output_dir: str | None = None, resume: bool = False,
           lighthouse: str | None = None, replica_id: int | None = None, replicas: int | None = None
           ) -> dict[str, Any]:
    if (lighthouse is None) != (replica_id is None):
        raise ConfigError("--lighthouse and --replica-id go together: one replica of a run whose Lighthouse runs "
                          "elsewhere; or give --replicas N to run N replicas and a Lighthouse on this machine")
    if lighthouse is not None and replicas is not None:
        raise ConfigError("--replicas starts a Lighthouse on this machine, --lighthouse joins a running one: give one")
    if lighthouse is None and replicas is None:
        raise ConfigError("the diloco backend needs --replicas N (N replicas and a Lighthouse on this machine) or "
                          "--lighthouse URL --replica-id N (one replica of a run on several clusters)")
    _check_torchft()
    if replicas is not None:
        from composer_diloco.launcher import launch

        return launch(config, output_dir=output_dir, replicas=replicas, resume=resume)
    from composer_diloco.replica import run_replica

    return run_replica(config, output_dir=output_dir, replica_id=replica_id, lighthouse=lighthouse, resume=resume)


def _native_config(config: ComposerConfig, *, run_settings: bool = False) -> str:
    from composer_diloco.commands import native_config

    return native_config(config, run_settings=run_settings)


@hookimpl
def register_backends(register: Register) -> None:
    register(Backend("diloco", "DiLoCo outer loop on torchft around the TRL inner loop: replicas on several "
                               "clusters (--lighthouse, --replica-id) or on this machine (--replicas N)",
                     _train, _native_config))
