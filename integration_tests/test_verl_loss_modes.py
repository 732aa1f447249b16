"""composer objectives and estimators inside VeRL, found and called through VeRL's own code paths.

A fresh interpreter that only does `import verl` must find the `composer_*` loss modes and estimators (the
`verl.plugins` entry point). Under the same real ActorConfig, `loss_mode=composer_<x>` must equal VeRL's own
mode with the same math: value, gradient and metrics, for every aggregation mode and every setting VeRL's
config carries. Estimators run through VeRL's trainer-side `compute_advantage`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("verl")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
verl_algorithm = pytest.importorskip("verl.trainer.config")

from verl_batches import (  # noqa: E402 - after the importorskip of verl
    TOL,
    Batch,
    GlobalInfo,
    Outcome,
    actor_config,
    assert_parity,
    make_batch,
    make_rollouts,
    outcome,
    verl_actor_loss,
)

from composer_core import registries  # noqa: E402
from composer_core.errors import BatchError, ConfigError  # noqa: E402
from composer_core.objectives import AGGREGATION_MODES  # noqa: E402
from composer_verl import plugin  # noqa: E402
from composer_verl.policy_loss import make_policy_loss_fn  # noqa: E402

pytestmark = pytest.mark.backend("verl")

# VeRL's mode -> composer objectives with the same per-token math under VeRL's config
SAME_MATH = {"vanilla": ("ppo", "grpo", "dr_grpo", "dapo", "bnpo"), "gspo": ("gspo",), "cispo": ("cispo",),
             "sapo": ("sapo",), "gpg": ("reinforce",)}
# ActorConfig settings each case sets; every one must reach the composer loss
ACTOR_SETTINGS = {
    "defaults": {},
    "asymmetric-clip-dual-c": {"clip_ratio_low": 0.15, "clip_ratio_high": 0.28, "clip_ratio_c": 2.5},
    "clip_ratio-only": {"clip_ratio": 0.1, "clip_ratio_low": None, "clip_ratio_high": None},
    "sapo-temperatures": {"tau_pos": 1.2, "tau_neg": 1.6},
}
GLOBAL_INFOS = {"local": GlobalInfo(loss_scale_factor=None),
                "dp2-global": GlobalInfo(dp_size=2, batch_num_tokens=150, global_batch_size=16, loss_scale_factor=16)}


CASES = [pytest.param(mode, objective, settings, aggregation, info,
                      id=f"{objective}~{mode}-{settings}-{aggregation}-{info}")
         for mode, objectives in SAME_MATH.items() for objective in objectives for settings in ACTOR_SETTINGS
         for aggregation in AGGREGATION_MODES for info in GLOBAL_INFOS]


def registered_loss(loss_mode: str, batch: Batch, aggregation: str, info: GlobalInfo,
                    settings: dict[str, Any]) -> Outcome:
    """The loss VeRL's registry returns for `loss_mode`, called with the actor's keyword contract."""
    config = actor_config(loss_mode, aggregation, global_batch_info=info.verl(), **settings)
    log_prob = batch.log_prob.clone().requires_grad_()
    loss, metrics = core_algos.get_policy_loss_fn(loss_mode)(
        old_log_prob=batch.old_log_prob, log_prob=log_prob, advantages=batch.advantages, response_mask=batch.mask,
        loss_agg_mode=aggregation, config=config, rollout_is_weights=None)
    return outcome(loss, log_prob, metrics)


# ---------------------------------------------------------------- discovery through `import verl`


def fresh_interpreter(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, check=False)


DISCOVERY = """
import json, verl
from verl.trainer.ppo import core_algos
modes = sorted(k for k in core_algos.POLICY_LOSS_REGISTRY if k.startswith("composer_"))
estimators = sorted(k for k in core_algos.ADV_ESTIMATOR_REGISTRY if k.startswith("composer_"))
core_algos.get_policy_loss_fn("composer_dr_grpo"); core_algos.get_adv_estimator_fn("composer_dr_grpo")
from verl.trainer.ppo.v1 import get_trainer_cls
print(json.dumps({"modes": modes, "estimators": estimators, "trainer": get_trainer_cls("composer").__name__}))
"""


def test_import_verl_registers_every_objective_estimator_and_the_trainer() -> None:
    result = fresh_interpreter(DISCOVERY)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["modes"] == sorted(f"composer_{name}" for name in registries().objectives.names())
    assert found["estimators"] == sorted(f"composer_{name}" for name in registries().advantage_estimators.names())
    assert found["trainer"] == "ComposerTrainer"
    assert "composer-core" not in result.stderr, result.stderr[-2000:]  # no warning on a healthy install


@pytest.mark.parametrize("env", [{"COMPOSER_VERL_PLUGIN": "off"}, {"VERL_USE_EXTERNAL_PLUGINS": "none"}],
                         ids=["composer-switch", "verl-switch"])
def test_plugin_can_be_switched_off(env: dict[str, str]) -> None:
    code = ("import verl\nfrom verl.trainer.ppo import core_algos\n"
            "print(sum(k.startswith('composer_') for k in core_algos.POLICY_LOSS_REGISTRY))")
    result = fresh_interpreter(code, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "0"


def test_a_failing_registration_is_a_warning_naming_the_cause(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """VeRL would swallow the error at DEBUG level; the plugin's own warning names it."""
    def broken() -> None:
        raise RuntimeError("plugin objective 'mine' failed to import")

    monkeypatch.setattr(plugin, "register_losses_and_estimators", broken)
    with caplog.at_level(logging.WARNING, logger="composer_verl"):
        plugin.load()
    assert "failed to import" in caplog.text and "unsupported" in caplog.text


@pytest.mark.parametrize(("argv", "unread"), [
    (["actor_rollout_ref.actor.policy_loss.loss_mode=composer_cispo", "+composer.policy.objective.params.x=1"],
     ["+composer.policy.objective.params.x=1"]),
    (["trainer.v1.trainer_mode=composer", "+composer.distill.weight=0.5"], []),
    (["actor_rollout_ref.actor.policy_loss.loss_mode=composer_cispo"], []),
])
def test_group_overrides_without_the_composer_trainer_are_flagged(argv: list[str], unread: list[str]) -> None:
    """The loss modes alone cannot see the composer group; a command line that sets it is warned at import."""
    assert plugin.unread_group_overrides(argv) == unread


def test_the_warning_appears_when_verl_is_imported_from_such_a_command_line() -> None:
    code = "import sys; sys.argv = ['main_ppo', '+composer.policy.objective.params.lower_clip=false']; import verl"
    result = fresh_interpreter(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "would be ignored" in result.stderr and "trainer_mode=composer" in result.stderr


def test_loading_twice_keeps_one_registration() -> None:
    """verl's estimator registry refuses a second, different function under one name: loading is idempotent."""
    before = core_algos.get_adv_estimator_fn("composer_grpo")
    plugin.register_losses_and_estimators()
    assert core_algos.get_adv_estimator_fn("composer_grpo") is before


# ---------------------------------------------------------------- loss modes against VeRL's own


@pytest.mark.parametrize(("verl_mode", "objective", "settings", "aggregation", "info"), CASES)
def test_composer_mode_equals_verl_mode_under_the_same_actor_config(verl_mode: str, objective: str, settings: str,
                                                                    aggregation: str, info: str) -> None:
    batch = make_batch(seed=21)
    ours = registered_loss(f"composer_{objective}", batch, aggregation, GLOBAL_INFOS[info], ACTOR_SETTINGS[settings])
    theirs = registered_loss(verl_mode, batch, aggregation, GLOBAL_INFOS[info], ACTOR_SETTINGS[settings])
    assert_parity(ours, theirs)


@pytest.mark.parametrize("settings", [name for name in ACTOR_SETTINGS if name != "defaults"])
def test_actor_settings_change_the_composer_loss(settings: str) -> None:
    """The settings are read, not ignored: each non-default one moves the loss away from the defaults'."""
    batch = make_batch(seed=22, spread=1.2)
    objective = "sapo" if settings == "sapo-temperatures" else "ppo"
    aggregation = "seq-mean-token-mean"
    default = registered_loss(f"composer_{objective}", batch, aggregation, GLOBAL_INFOS["local"], {})
    changed = registered_loss(f"composer_{objective}", batch, aggregation, GLOBAL_INFOS["local"],
                              ACTOR_SETTINGS[settings])
    assert abs((default.loss - changed.loss).item()) > 1e-4


@pytest.mark.parametrize(("verl_mode", "objective"), [("vanilla", "dr_grpo"), ("gspo", "gspo"), ("cispo", "cispo")])
@pytest.mark.parametrize("kl", [None, "low_var_kl", "k1"])
def test_switching_the_loss_mode_in_verls_actor_loss_changes_nothing_but_the_name(verl_mode: str, objective: str,
                                                                                   kl: str | None) -> None:
    """VeRL's `ppo_loss` (policy loss, KL loss, global counts from the data) with only loss_mode switched."""
    batch = make_batch(seed=23)
    ref = batch.old_log_prob + 0.4 * torch.randn(batch.mask.shape, generator=torch.Generator().manual_seed(24),
                                                 dtype=batch.log_prob.dtype)
    kl_settings = {"use_kl_loss": True, "kl_loss_type": kl, "kl_loss_coef": 0.05} if kl else {}
    info = GlobalInfo(dp_size=2, batch_num_tokens=150, global_batch_size=16)
    settings = {"loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 16, "clip_ratio_high": 0.28,
                **kl_settings}
    theirs = verl_actor_loss(batch, actor_config(verl_mode, **settings), info, ref if kl else None)
    ours = verl_actor_loss(batch, actor_config(f"composer_{objective}", **settings), info, ref if kl else None)
    assert_parity(ours, theirs)


def test_rollout_correction_weights_are_applied() -> None:
    batch = make_batch(seed=25)
    weights = torch.rand(batch.mask.shape, generator=torch.Generator().manual_seed(26), dtype=batch.log_prob.dtype)
    results = []
    for mode in ("vanilla", "composer_ppo"):
        config = actor_config(mode)
        log_prob = batch.log_prob.clone().requires_grad_()
        loss, metrics = core_algos.get_policy_loss_fn(mode)(
            old_log_prob=batch.old_log_prob, log_prob=log_prob, advantages=batch.advantages,
            response_mask=batch.mask, loss_agg_mode="token-mean", config=config, rollout_is_weights=weights)
        results.append(outcome(loss, log_prob, metrics))
    assert_parity(results[1], results[0])


def test_data_parallel_without_global_counts_is_refused_like_verl() -> None:
    batch = make_batch(seed=27)
    info = GlobalInfo(dp_size=2)
    with pytest.raises(ValueError, match="batch_num_tokens"):
        registered_loss("vanilla", batch, "token-mean", info, {})
    with pytest.raises(BatchError, match="batch_num_tokens"):
        registered_loss("composer_ppo", batch, "token-mean", info, {})


def test_group_settings_add_what_verl_cannot_carry_and_refuse_what_it_can() -> None:
    """cispo's lower clip has no VeRL key: the composer group may turn it off; a clip ratio it may not repeat."""
    batch = make_batch(seed=28, spread=1.0)
    config = actor_config("cispo", clip_ratio_high=4.0)
    kwargs = {"old_log_prob": batch.old_log_prob, "log_prob": batch.log_prob, "advantages": batch.advantages,
              "response_mask": batch.mask, "loss_agg_mode": "token-mean", "config": config}
    verl_loss, _ = core_algos.get_policy_loss_fn("cispo")(**kwargs, rollout_is_weights=None)
    same, _ = make_policy_loss_fn("cispo")(**kwargs)
    upper_only, _ = make_policy_loss_fn("cispo", {"lower_clip": False})(**kwargs)
    torch.testing.assert_close(same, verl_loss, **TOL)
    assert abs((upper_only - verl_loss).item()) > 1e-4
    with pytest.raises(ConfigError, match=r"actor_rollout_ref\.actor\.clip_ratio_high"):
        make_policy_loss_fn("cispo", {"clip_ratio_high": 5.0})(**kwargs)
    with pytest.raises(ConfigError, match=r"composer\.policy\.objective\.params\.lower_clip"):
        make_policy_loss_fn("cispo", {"lower_clip": "sometimes"})(**kwargs)


def test_the_loss_mode_needs_verls_config() -> None:
    batch = make_batch(seed=29)
    with pytest.raises(TypeError, match="ActorConfig"):
        core_algos.get_policy_loss_fn("composer_ppo")(old_log_prob=batch.old_log_prob, log_prob=batch.log_prob,
                                                      advantages=batch.advantages, response_mask=batch.mask)


# ---------------------------------------------------------------- estimators through VeRL's compute_advantage


ESTIMATORS = {  # composer estimator, algorithm settings -> VeRL's estimator with the same math
    "grpo": ("composer_grpo", {}, "grpo"),
    "grpo-no-std": ("composer_grpo", {"norm_adv_by_std_in_grpo": False}, "grpo"),
    "dr_grpo": ("composer_dr_grpo", {"norm_adv_by_std_in_grpo": False}, "grpo"),
    "rloo": ("composer_rloo", {}, "rloo"),
    "reinforce_plus_plus": ("composer_reinforce_plus_plus", {"gamma": 0.9}, "reinforce_plus_plus"),
    "reinforce_plus_plus_baseline": ("composer_reinforce_plus_plus_baseline", {}, "reinforce_plus_plus_baseline"),
}


def trainer_advantages(estimator: str, settings: dict[str, Any], rewards: torch.Tensor, mask: torch.Tensor,
                       uids: np.ndarray) -> torch.Tensor:
    """VeRL's trainer-side `compute_advantage` on a DataProto, as its PPO step calls it."""
    ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer")
    from tensordict import TensorDict
    from verl import DataProto

    data = DataProto(batch=TensorDict({"token_level_rewards": rewards, "response_mask": mask.long()},
                                      batch_size=[len(uids)]), non_tensor_batch={"uid": uids})
    algorithm = verl_algorithm.AlgoConfig(adv_estimator=estimator, **settings)
    data = ray_trainer.compute_advantage(data, adv_estimator=estimator, gamma=algorithm.gamma,
                                         norm_adv_by_std_in_grpo=algorithm.norm_adv_by_std_in_grpo,
                                         config=algorithm)
    return data.batch["advantages"]


@pytest.mark.parametrize("case", list(ESTIMATORS))
def test_composer_estimator_equals_verls_through_compute_advantage(case: str) -> None:
    ours_name, settings, verl_name = ESTIMATORS[case]
    rollouts = make_rollouts(seed=30, group_sizes=(4, 2, 5, 3))
    rewards = rollouts.token_rewards()
    ours = trainer_advantages(ours_name, settings, rewards, rollouts.mask, rollouts.uids)
    theirs = trainer_advantages(verl_name, settings, rewards, rollouts.mask, rollouts.uids)
    assert bool(theirs.abs().sum() > 0)
    torch.testing.assert_close(ours, theirs, **TOL)


def test_composer_estimator_refuses_singleton_groups_naming_them() -> None:
    rollouts = make_rollouts(seed=31, group_sizes=(3, 1, 4))
    with pytest.raises(BatchError, match="singleton"):
        trainer_advantages("composer_grpo", {}, rollouts.token_rewards(), rollouts.mask, rollouts.uids)
