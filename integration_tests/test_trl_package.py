"""The composer_trl package surface: the documented names import from the package, lazily, and the GRPOConfig
mapping refuses values in TRL's own setting names."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("trl")

from trl import GRPOConfig

from composer_core.errors import ConfigError
from composer_trl.grpo_mapping import composer_config_from_grpo


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_the_documented_names_import_from_the_package_without_importing_trl_up_front() -> None:
    result = python("import sys, composer_trl\n"
                    "assert 'trl' not in sys.modules, 'import composer_trl imported TRL'\n"
                    "from composer_trl import ComposerGRPOTrainer, composer_config_from_grpo, run_job\n"
                    "from trl import GRPOTrainer\n"
                    "assert issubclass(ComposerGRPOTrainer, GRPOTrainer)\n"
                    "assert set(composer_trl.__all__) <= set(dir(composer_trl))\n"
                    "try:\n    composer_trl.NoSuchName\nexcept AttributeError as error:\n    print(error)\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no attribute 'NoSuchName'" in result.stdout


def test_without_trl_the_package_imports_and_says_what_to_install() -> None:
    result = python("import sys\nsys.modules['trl'] = None  # as if TRL were not installed\n"
                    "import composer_trl\n"
                    "try:\n    from composer_trl import ComposerGRPOTrainer\n"
                    "except ImportError as error:\n    print(error)\n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install 'composer-core[trl]'" in result.stdout


def grpo(**settings: object) -> GRPOConfig:
    return GRPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none", **settings)


@pytest.mark.parametrize("settings, named", [
    ({"loss_type": "cispo"}, "GRPOConfig.epsilon_high=None (TRL then uses epsilon=0.2)"),
    ({"loss_type": "cispo", "epsilon_high": 0.5}, "GRPOConfig.epsilon_high=0.5"),
    ({"loss_type": "grpo", "epsilon": -0.1}, "GRPOConfig.epsilon=-0.1"),
    ({"loss_type": "dapo", "epsilon_high": -1.0}, "GRPOConfig.epsilon_high=-1.0"),
    ({"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": -1.0}, "GRPOConfig.epsilon=-1.0"),
    ({"loss_type": "sapo", "sapo_temperature_neg": 0.0}, "GRPOConfig.sapo_temperature_neg=0.0"),
])
def test_refusals_name_trls_own_settings(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        composer_config_from_grpo(grpo(**settings))
    message = str(caught.value)
    assert named in message
    for composer_name in ("clip_ratio_low", "clip_ratio_high", "tau_pos", "tau_neg", "kl.coef"):
        assert composer_name not in message


def test_cispo_with_trls_recommended_cap_maps_onto_the_composer_objective() -> None:
    params = composer_config_from_grpo(grpo(loss_type="cispo", epsilon_high=5.0)).policy.objective.params
    assert params["clip_ratio_high"] == pytest.approx(4.0) and params["lower_clip"] is False
