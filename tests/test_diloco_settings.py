"""The `diloco:` section of the experiment config: DiLoCo's defaults, and torchft's rules checked as the config loads
with messages that name the field and the way out."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

import pytest
import torch

from composer_core import ComposerConfig, ConfigError
from composer_core.diloco_settings import DilocoConfig


def diloco(**settings: object) -> DilocoConfig:
    return ComposerConfig.from_mapping({"diloco": settings}).diloco


def test_the_defaults_are_the_diloco_papers_outer_optimizer() -> None:
    settings = ComposerConfig().diloco
    assert (settings.outer_lr, settings.outer_momentum, settings.nesterov) == (0.7, 0.9, True)
    assert (settings.fragments, settings.fragment_sync_delay, settings.min_replicas) == (1, 0, 1)
    assert settings.sync_every >= 1 and settings.timeout_s > 0 and settings.quorum_timeout_s > 0
    assert all(field.description for field in DilocoConfig.model_fields.values())


def test_a_yaml_section_loads_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("diloco:\n  sync_every: 12\n  fragments: 3\n  fragment_sync_delay: 2\n  min_replicas: 2\n")
    config = ComposerConfig.from_file(path)
    assert (config.diloco.sync_every, config.diloco.fragments, config.diloco.fragment_sync_delay) == (12, 3, 2)
    assert ComposerConfig.from_mapping(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(("settings", "message"), [
    ({"sync_every": 10, "fragments": 3}, r"diloco\.sync_every \(10\) must be a multiple of diloco\.fragments \(3\)"),
    ({"sync_every": 2, "fragments": 4}, r"diloco\.sync_every \(2\) must be a multiple of diloco\.fragments \(4\)"),
    ({"sync_every": 8, "fragments": 2, "fragment_sync_delay": 4},
     r"diloco\.fragment_sync_delay \(4\) must be less than sync_every / fragments \(4\)"),
    ({"sync_every": 1, "fragment_sync_delay": 1}, r"fragment_sync_delay \(1\) must be less than .* \(1\)"),
    ({"outer_momentum": 0.0}, r"diloco\.nesterov needs diloco\.outer_momentum > 0"),
    ({"sync_every": 0}, r"diloco\.sync_every: Input should be greater than or equal to 1"),
    ({"outer_lr": 0}, r"diloco\.outer_lr: Input should be greater than 0"),
    ({"outer_momentum": 1.0}, r"diloco\.outer_momentum: Input should be less than 1"),
    ({"min_replicas": 0}, r"diloco\.min_replicas: Input should be greater than or equal to 1"),
    ({"timeout_s": float("inf")}, r"diloco\.timeout_s: Input should be a finite number"),
    ({"max_restarts": -1}, r"diloco\.max_restarts: Input should be greater than or equal to 0"),
    ({"sync_evry": 4}, r"diloco\.sync_evry: Extra inputs are not permitted"),
])
def test_invalid_settings_name_the_field(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        diloco(**settings)


def test_the_boundaries_torchft_accepts_are_accepted() -> None:
    assert diloco(sync_every=8, fragments=2, fragment_sync_delay=3).fragment_sync_delay == 3
    assert diloco(sync_every=4, fragments=4).fragments == 4
    assert diloco(outer_momentum=0.0, nesterov=False).outer_momentum == 0.0


def test_torchft_itself_accepts_what_the_config_accepts_and_refuses_the_rest() -> None:
    """The config's rules are torchft's: a config that loads builds torchft's DiLoCo, one refused would fail there."""
    torchft = pytest.importorskip("torchft.local_sgd")
    manager = MagicMock(_use_async_quorum=False)
    fragments = [torch.nn.Linear(2, 2) for _ in range(2)]
    inner = torch.optim.SGD([p for fragment in fragments for p in fragment.parameters()], lr=0.1)

    def build(sync_every: int, delay: int) -> None:
        outer = torch.optim.SGD([p for fragment in fragments for p in fragment.parameters()], lr=0.7)
        torchft.DiLoCo(manager, fragments, inner, outer, sync_every=sync_every, fragment_sync_delay=delay)

    for sync_every, delay in ((4, 1), (2, 0), (6, 2)):
        diloco(sync_every=sync_every, fragments=2, fragment_sync_delay=delay)
        build(sync_every, delay)
    for sync_every, delay in ((5, 0), (4, 2), (1, 0)):
        with pytest.raises(ConfigError):
            diloco(sync_every=sync_every, fragments=2, fragment_sync_delay=delay)
        with pytest.raises(ValueError):
            build(sync_every, delay)
