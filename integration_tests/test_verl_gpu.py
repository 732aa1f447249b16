"""examples/verl/smoke_gpu.py: its job configuration checked on any machine, the run itself on a CUDA GPU.

VeRL's trainer has no CPU platform, so the end-to-end run is skipped (with the reason) without CUDA and
VeRL's vLLM rollout. The composed configuration of both phases is checked everywhere: every override the
script passes must exist in VeRL's config and the composer group must pass the driver-side checks.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

verl = pytest.importorskip("verl")
hydra = pytest.importorskip("hydra")

from composer_core import ComposerConfig  # noqa: E402
from composer_verl.group import composer_settings  # noqa: E402
from composer_verl.overrides import verl_overrides  # noqa: E402

pytestmark = pytest.mark.backend("verl")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "verl" / "smoke_gpu.py"


def smoke_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verl_smoke_gpu", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("phase", ["composer_loss_mode", "self_distillation"])
def test_the_smoke_jobs_compose_with_verls_config(phase: str, tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    script = smoke_script()
    train = script.write_data(tmp_path, 8, "train", seed=0)
    base = script.one_gpu_overrides(script.embedded_model(), train, train, steps=2)
    owned = {line.split("=", 1)[0] for line in base}
    composer = [line for line in verl_overrides(ComposerConfig.from_mapping(script.PHASES[phase]), run_settings=True)
                if line.split("=", 1)[0] not in owned]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
        composed = hydra.compose(config_name="ppo_trainer", overrides=composer + base)
    from verl.utils.config import omega_conf_to_dataclass

    actor = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == "composer_dr_grpo"
    if phase == "self_distillation":
        settings, _ = composer_settings(composed)
        assert settings.distill.weight == 0.5 and composed.trainer.v1.trainer_mode == "composer"


def gpu_run_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU: VeRL's trainer has no CPU platform (run examples/verl/smoke_gpu.py on a GPU machine)"
    if importlib.util.find_spec("vllm") is None:
        return "VeRL's vLLM rollout is not installed (pip install vllm)"
    return None


@pytest.mark.skipif(gpu_run_missing() is not None, reason=gpu_run_missing() or "")
def test_smoke_run_on_one_gpu(tmp_path: Path) -> None:
    """Two GRPO steps with composer_dr_grpo, then two with self-distillation, through VeRL's own launcher."""
    script = smoke_script()
    assert script.main(["--output-dir", str(tmp_path), "--steps", "2"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for phase, result in summary.items():
        assert len(result["steps"]) == 2, phase
        for metrics in result["steps"].values():
            assert math.isfinite(metrics["actor/pg_loss"]), phase
    for metrics in summary["self_distillation"]["steps"].values():
        assert "composer/distill_rows" in metrics and math.isfinite(metrics["actor/distill/loss"])
