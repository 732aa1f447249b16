"""TRL adapter: composer-core's loss inside TRL's GRPOTrainer, and the embedded default job.

The public names are imported on first use (PEP 562), so `import composer_trl` stays fast and works where TRL
is missing; using a name that needs TRL there raises an ImportError that says how to install it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# public name -> the module that defines it
PUBLIC = {
    "ComposerGRPOTrainer": "composer_trl.trainer",
    "composer_config_from_grpo": "composer_trl.grpo_mapping",
    "run_job": "composer_trl.run",
    "native_config": "composer_trl.trl_settings",
    "EMBEDDED_MODEL": "composer_trl.defaults",
    "TeacherWeights": "composer_trl.teacher_weights",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'composer_trl' has no attribute {name!r}")
    try:
        module = import_module(PUBLIC[name])
    except ImportError as error:
        raise ImportError(f"composer_trl.{name} needs TRL and its dependencies: pip install 'composer-core[trl]' "
                          f"({error})") from error
    value = getattr(module, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})
