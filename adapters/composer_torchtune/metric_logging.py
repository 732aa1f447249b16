"""A torchtune metric logger that appends one JSON object per step to a file (the `metrics.jsonl` every
composer-core backend writes), for the recipe's `metric_logger:` component."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


class JsonlLogger:
    """torchtune's MetricLoggerInterface over a JSON-lines file; the config goes to `config.yaml` beside it."""

    def __init__(self, path: str, **_: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = self.path.open("a", encoding="utf-8")

    def log(self, name: str, data: Any, step: int) -> None:
        self.log_dict({name: data}, step)

    def log_dict(self, payload: Mapping[str, Any], step: int) -> None:
        row = {"step": step, **{key: plain(value) for key, value in payload.items()}}
        self.stream.write(json.dumps(row) + "\n")
        self.stream.flush()

    def log_config(self, config: DictConfig) -> None:
        OmegaConf.save(config, self.path.parent / "config.yaml")

    def close(self) -> None:
        self.stream.close()


def plain(value: Any) -> Any:
    """A tensor or number as a JSON value; NaN and infinities as strings (JSON has no such numbers)."""
    number = value.item() if isinstance(value, torch.Tensor) else value
    if isinstance(number, float) and not math.isfinite(number):
        return str(number)
    return number
