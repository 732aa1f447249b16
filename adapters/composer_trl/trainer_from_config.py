"""A ComposerConfig's whole job as a trainer in Python, and a warning where only its loss sections are used.

`ComposerGRPOTrainer.from_config(config)` builds the trainer `composer-core train` builds (composer_trl.run's
`build_trainer`): the model of model.path (or the embedded one), the data and reward functions of data and
reward, the GRPOConfig of run (composer_trl.trl_settings), so that one YAML means the same in Python and on the
command line. `ComposerGRPOTrainer(..., args=GRPOConfig(...), composer_config=config)` takes its model, data,
rewards and run settings from its own arguments instead: the config's run, model, data and reward sections are
then not used, and a config whose sections differ from the defaults gets a warning naming them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from composer_core.config import ComposerConfig, DataConfig, ModelConfig, RunConfig
from composer_core.errors import ConfigError
from composer_trl.job_data import job_data
from composer_trl.model_folder import load_model
from composer_trl.trl_settings import build_grpo_config

if TYPE_CHECKING:
    from composer_trl.trainer import ComposerGRPOTrainer


def unused_sections(config: ComposerConfig) -> list[str]:
    """The sections a trainer built from its own arguments ignores that differ from their defaults."""
    defaults = {"run": RunConfig(), "model": ModelConfig(), "data": DataConfig()}
    changed = [name for name, default in defaults.items() if getattr(config, name) != default]
    return [*changed, "reward"] if config.reward else changed


def warn_unused_sections(config: ComposerConfig) -> None:
    """Warn (once per call site) that the config's run/model/data/reward settings are not what this trainer uses."""
    unused = unused_sections(config)
    if unused:
        warnings.warn(f"composer_config sets {', '.join(unused)}, which ComposerGRPOTrainer(...) does not use: it "
                      "trains the model, data and reward functions passed to it with the GRPOConfig `args`, and takes "
                      "only the loss (policy, distill, preference) from the config; use "
                      "ComposerGRPOTrainer.from_config(config) to train what the config describes",
                      UserWarning, stacklevel=3)


def trainer_from_config(trainer_class: type[ComposerGRPOTrainer], config: ComposerConfig, model: Any = None,
                        tokenizer: Any = None, **grpo_arguments: Any) -> ComposerGRPOTrainer:
    """The trainer `composer-core train` would build for `config` (see the module docstring); `model` (a loaded
    model) replaces model.path, `tokenizer` the model's own, and `grpo_arguments` replace GRPOConfig arguments
    (output_dir defaults to run.output_dir/checkpoints, as in `composer-core train`)."""
    from composer_trl.run import build_trainer, model_path_of  # run and run_folder import the trainer module
    from composer_trl.run_folder import CHECKPOINTS

    if isinstance(model, str | Path):
        raise ConfigError(f"from_config(model={str(model)!r}): pass a loaded model, or set model.path in the config")
    if model is not None and config.model.path is not None:
        warnings.warn(f"model.path={config.model.path!r} is not used: from_config was given a model", UserWarning,
                      stacklevel=3)
    data = job_data(config)
    if model is None:
        model, own_tokenizer = load_model(model_path_of(config))
        tokenizer = tokenizer if tokenizer is not None else own_tokenizer
    grpo_config = build_grpo_config(config, str(Path(config.run.output_dir) / CHECKPOINTS), grpo_arguments)
    return build_trainer(config, grpo_config, model, tokenizer, data, callbacks=[], trainer_class=trainer_class)
