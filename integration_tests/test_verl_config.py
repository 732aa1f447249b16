"""A ComposerConfig carried into a VeRL job: the printed hydra overrides compose with VeRL's own config, the
composer group is read back identically, and what VeRL cannot run is refused on the driver, by name."""

from __future__ import annotations

import os
from typing import Any

import pytest

verl = pytest.importorskip("verl")
hydra = pytest.importorskip("hydra")
verl_config = pytest.importorskip("verl.utils.config")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

from composer_core import ComposerConfig  # noqa: E402
from composer_core.cli.main import main as cli_main  # noqa: E402
from composer_core.errors import ConfigError  # noqa: E402
from composer_verl.composite_loss import ComposerActorLoss  # noqa: E402
from composer_verl.group import composer_settings  # noqa: E402
from composer_verl.overrides import verl_overrides  # noqa: E402

pytestmark = pytest.mark.backend("verl")

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
JOB = ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"]  # what every existing job already sets


def compose(overrides: list[str]) -> Any:
    """VeRL's own ppo_trainer config with these overrides, as `python -m verl.trainer.main_ppo ...` builds it."""
    with hydra.initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return hydra.compose(config_name="ppo_trainer", overrides=JOB + overrides)


CONFIGS = {
    "dr_grpo-default": {},
    "gspo-kl-reward": {"policy": {"objective": {"name": "gspo"},
                                  "kl": {"coef": 0.02, "placement": "reward", "estimator": "k1"}}},
    "cispo-extras": {"policy": {"objective": {"name": "cispo", "params": {"lower_clip": False}},
                                "advantage": {"params": {"singleton_group": "verl"}},
                                "kl": {"coef": 0.1, "estimator": "k3"}}},
    "distill": {"distill": {"weight": 0.5, "support": "teacher_topk", "top_k": 20, "teacher": "ema",
                            "context": {"success_reward_threshold": 1.0}}},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_printed_overrides_compose_with_verls_config_and_read_back(name: str) -> None:
    config = ComposerConfig.from_mapping(CONFIGS[name])
    composed = compose(verl_overrides(config))
    actor = verl_config.omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    algorithm = verl_config.omega_conf_to_dataclass(composed.algorithm)
    resolved = config.policy.objective.resolve()
    assert actor.policy_loss.loss_mode == f"composer_{resolved.objective.name}"
    assert actor.loss_agg_mode == resolved.aggregation
    core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode)
    core_algos.get_adv_estimator_fn(algorithm.adv_estimator)
    params = resolved.params.model_dump()
    for key in ("clip_ratio_low", "clip_ratio_high"):
        assert getattr(actor, key) == pytest.approx(params[key])
    kl = config.policy.kl
    assert actor.use_kl_loss == (kl.coef > 0 and kl.placement == "loss")
    assert algorithm.use_kl_in_reward == (kl.coef > 0 and kl.placement == "reward")
    composer, group = composer_settings(composed)
    assert ComposerActorLoss(actor, group).composer == composer  # what the workers rebuild from the shipped group
    assert composer.distill == config.distill
    assert composer.policy.objective.params == {k: v for k, v in config.policy.objective.params.items()
                                                if k not in ("clip_ratio_low", "clip_ratio_high")}
    assert composer.policy.advantage.params == config.policy.advantage.params
    if config.distill.weight > 0:
        assert composed.trainer.use_v1 and composed.trainer.v1.trainer_mode == "composer"


def test_cli_train_on_verl_points_to_verls_launcher(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "--backend", "verl"]) != 0
    assert "--print-backend-config" in capsys.readouterr().err


REFUSED = {
    "preference channel": ({"preference": {"weight": 0.5}}, [], "trace-replay DPO"),
    "full-vocabulary support": ({"distill": {"weight": 0.5, "support": "full"}}, [], "support"),
    "sapo without its aggregation": ({"policy": {"objective": {"name": "sapo", "aggregation": "token-mean"}}}, [],
                                     "always aggregates seq-mean-token-mean"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_overrides_refuse_what_verl_cannot_run(case: str) -> None:
    mapping, _, message = REFUSED[case]
    with pytest.raises(ConfigError, match=message):
        verl_overrides(ComposerConfig.from_mapping(mapping))


LOSS_MODE = "actor_rollout_ref.actor.policy_loss.loss_mode=composer_dr_grpo"
GROUP_ERRORS = {
    "a verl loss mode": (["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"], "composer_<name>"),
    "kl in the group": ([LOSS_MODE, "+composer.policy.kl.coef=0.1"], "kl_loss_coef"),
    "aggregation in the group": ([LOSS_MODE, "+composer.policy.objective.aggregation=token-mean"], "loss_agg_mode"),
    "another objective": ([LOSS_MODE, "+composer.policy.objective.name=gspo"], "disagrees"),
    "run settings": ([LOSS_MODE, "+composer.run.max_steps=3"], "VeRL's own keys"),
    "unknown distill key": ([LOSS_MODE, "+composer.distill.wieght=0.5"], "wieght"),
    "trust-region teacher": ([LOSS_MODE, "+composer.distill.weight=0.5", "+composer.distill.support=teacher_topk",
                              "+composer.distill.teacher=trust-region"], "trust-region"),
    "temperature": ([LOSS_MODE, "+composer.distill.weight=0.5", "+composer.distill.support=teacher_topk",
                     "+composer.distill.teacher=live", "actor_rollout_ref.rollout.temperature=0.7"], "temperature"),
    "local normaliser": ([LOSS_MODE, "+composer.distill.weight=0.5", "+composer.distill.support=teacher_topk",
                          "+composer.distill.teacher=live", "+composer.distill.normaliser=local"], "normaliser"),
    "fused kernels": ([LOSS_MODE, "+composer.distill.weight=0.5", "+composer.distill.support=teacher_topk",
                       "+composer.distill.teacher=live", "actor_rollout_ref.model.use_fused_kernels=true"],
                      "use_fused_kernels"),
}


@pytest.mark.parametrize("case", list(GROUP_ERRORS))
def test_the_group_refuses_on_the_driver_naming_the_key(case: str) -> None:
    overrides, message = GROUP_ERRORS[case]
    with pytest.raises((ConfigError, ValueError), match=message):
        composer_settings(compose(overrides))
