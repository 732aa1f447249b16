"""composer-core: the Composer 2.5 training loss as pure functions, with adapters for VeRL, TRL and torchtune.

Channel 1 (policy optimisation) and channel 2 (self-distillation) follow Cursor's Composer recipe;
channel 3 (trace-replay DPO) is composer-core's own research channel, not part of that recipe.
"""

from composer_core.advantage import compute_advantages
from composer_core.config import (
    AdvantageConfig,
    ComposerConfig,
    DistillConfig,
    KLConfig,
    ObjectiveConfig,
    PolicyConfig,
    PreferenceConfig,
)
from composer_core.errors import BatchError, ComposerError, ConfigError, PluginError, UnknownNameError
from composer_core.loss import ComposerLoss, DistillInputs, EmptyDistillMaskWarning, LossOutput, PolicyInputs
from composer_core.objectives import Normaliser
from composer_core.plugins import hookimpl, registries
from composer_core.preference import PreferenceBatch

__all__ = [
    "AdvantageConfig",
    "BatchError",
    "ComposerConfig",
    "ComposerError",
    "ComposerLoss",
    "ConfigError",
    "DistillConfig",
    "DistillInputs",
    "EmptyDistillMaskWarning",
    "KLConfig",
    "LossOutput",
    "Normaliser",
    "ObjectiveConfig",
    "PluginError",
    "PolicyConfig",
    "PolicyInputs",
    "PreferenceBatch",
    "PreferenceConfig",
    "UnknownNameError",
    "compute_advantages",
    "hookimpl",
    "registries",
]
