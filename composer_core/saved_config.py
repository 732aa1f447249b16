"""The config a run trained with, saved in its output folder as `config.json`.

`composer-core train --config OUT/config.json` reruns the same job: the file holds the resolved config (defaults
that are resolved later written out, local paths made absolute). `--resume` compares the config it is given with
the saved one and refuses a difference that changes the training; only the keys in RESUMABLE (how long, where and
what is logged or evaluated) may change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from composer_core.config import ComposerConfig, RewardFunctionConfig
from composer_core.errors import ConfigError
from composer_core.files import write_text_atomic

SAVED_CONFIG = "config.json"
# keys a resumed run may change: the length of the run, where it writes, and what it logs, saves and evaluates
RESUMABLE = frozenset({"run.max_steps", "run.output_dir", "run.logging_steps", "run.report_to", "run.save_steps",
                       "run.eval_steps", "data.eval", "data.eval_split", "data.eval_size"})
LOCAL_PATHS = (("model", "path"), ("data", "train"), ("data", "eval"), ("data", "preference_pairs"),
               ("data", "targets"))


def _absolute_if_local(value: str | None) -> str | None:
    """An existing relative path made absolute, so the saved config works from any folder; a hub name (or any value
    that names no local file) is kept as it is."""
    if value is None or Path(value).is_absolute() or not Path(value).exists():
        return value
    return str(Path(value).resolve())


def _absolute_reward(reference: str) -> str:
    location, name = RewardFunctionConfig.split(reference)
    return f"{_absolute_if_local(location)}:{name}" if RewardFunctionConfig.names_a_file(location) else reference


def saved_form(config: ComposerConfig, output_dir: Path) -> dict[str, Any]:
    """The config as it is saved: resolved, local paths absolute, run.output_dir the folder the run writes to."""
    data, _ = config.resolved()
    for section, key in LOCAL_PATHS:
        data[section][key] = _absolute_if_local(data[section][key])
    for reward in data["reward"]:
        reward["function"] = _absolute_reward(reward["function"])
    data["run"]["output_dir"] = str(output_dir.resolve())
    return data


def save_run_config(config: ComposerConfig, output_dir: Path) -> Path:
    """Write OUTPUT/config.json (atomically) and return its path."""
    path = output_dir / SAVED_CONFIG
    write_text_atomic(path, json.dumps(saved_form(config, output_dir), indent=2) + "\n", what="run config")
    return path


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (lists are leaves)."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(_flat(child, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def training_differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """`key: saved -> given` for each key outside RESUMABLE whose value differs."""
    old, new = _flat(saved), _flat(given)
    changed = sorted(key for key in old.keys() | new.keys()
                     if key not in RESUMABLE and old.get(key, "<absent>") != new.get(key, "<absent>"))
    return [f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}" for key in changed]


def check_resumed_config(config: ComposerConfig, output_dir: Path) -> bool:
    """Refuse to resume with a config that trains differently from the saved one, naming the differing keys.
    False when the folder has no saved config (a run from before configs were saved): nothing to compare."""
    path = output_dir / SAVED_CONFIG
    if not path.exists():
        return False
    try:
        saved = ComposerConfig.from_file(path)
    except ConfigError as error:
        raise ConfigError(f"--resume: the run's saved config cannot be read: {error}; restore {path}, or delete it "
                          "to resume without comparing configs") from None
    differences = training_differences(saved_form(saved, output_dir), saved_form(config, output_dir))
    if differences:
        raise ConfigError(f"--resume: this config trains differently from the one {output_dir} was trained with "
                          f"({path}): {'; '.join(differences)}. Resume with `--config {path}` (only run.max_steps, "
                          "the logging, saving and eval settings may change), or start a new run in another folder")
    return True

