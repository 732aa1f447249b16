"""Training backends as plugins: `composer-core train --backend NAME` runs a ComposerConfig on one.

Each adapter registers a `Backend` through the `register_backends` hook (from its entry point), so the
core never imports a training framework: a backend whose framework is not installed says so when run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Backend:
    """train(config, **options) runs the job and returns a summary dict; native_config(config) returns the
    backend's own configuration that the ComposerConfig maps to, as text a user can paste into a job: only what
    the composer loss needs, so an existing job's run is unchanged; native_config(config, run_settings=True) adds
    the config's run settings (learning rate, batch shape, lengths, steps, saving). default_model() is the folder
    of the model a job without model.path trains, for tools that load it themselves (the ladder's replay
    teachers); None when the backend has none."""

    name: str
    description: str
    train: Callable[..., dict[str, Any]]
    native_config: Callable[..., str]
    default_model: Callable[[], Path] | None = None
