"""The `composer` config group of a VeRL job (`+composer.*` hydra overrides), read and checked on the driver.

The group holds what VeRL's own config cannot: objective and estimator settings VeRL has no key for, the
self-distillation channel and the training guard. Everything VeRL carries stays in VeRL's keys; repeating it here
is an error naming the VeRL key, so one number never has two sources. Checked before any worker starts.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from composer_core.config import ComposerConfig
from composer_core.errors import ConfigError
from composer_core.guard import GuardConfig, active_rules
from composer_verl.overrides import check_runnable
from composer_verl.policy_loss import LOSS_MODE_PREFIX

GROUP_SECTIONS = {"policy", "distill", "guard"}
VERL_OWNED = {"policy.kl": "actor_rollout_ref.actor.use_kl_loss / kl_loss_coef / kl_loss_type (or algorithm."
                             "use_kl_in_reward)",
              "policy.objective.aggregation": "actor_rollout_ref.actor.loss_agg_mode",
              "policy.objective.normaliser": "VeRL's global batch counts (always used)"}
VERL_TEACHERS = ("live", "ema", "frozen")


def loss_mode_objective(config: DictConfig) -> str:
    mode = OmegaConf.select(config, "actor_rollout_ref.actor.policy_loss.loss_mode", default="vanilla")
    if not str(mode).startswith(LOSS_MODE_PREFIX):
        raise ConfigError(f"the composer trainer needs a composer objective: set actor_rollout_ref.actor.policy_loss."
                          f"loss_mode=composer_<name> (got {mode!r})")
    return str(mode)[len(LOSS_MODE_PREFIX):]


def group_mapping(config: DictConfig) -> dict[str, Any]:
    """The group as plain data, with the objective named by VeRL's loss mode; unknown sections refused."""
    raw = OmegaConf.select(config, "composer", default=None)
    group: dict[str, Any] = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}  # type: ignore[assignment]
    unknown = set(group) - GROUP_SECTIONS
    if unknown:
        raise ConfigError(f"composer.{sorted(unknown)[0]} is not read on VeRL: the composer group holds "
                          f"{sorted(GROUP_SECTIONS)}; model, data and run settings are VeRL's own keys")
    policy = group.setdefault("policy", {})
    objective = policy.setdefault("objective", {})
    for path, verl_key in VERL_OWNED.items():
        section, _, name = path.partition(".")
        node = group.get(section, {})
        for part in name.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if node not in ({}, None):
            raise ConfigError(f"composer.{path} is carried by VeRL's own config on this backend: set {verl_key}")
    named = loss_mode_objective(config)
    if objective.get("name", named) != named:
        raise ConfigError(f"composer.policy.objective.name={objective['name']!r} disagrees with VeRL's loss_mode "
                          f"composer_{named}: set only the loss mode")
    objective["name"] = named
    return group


def composer_settings(config: DictConfig) -> tuple[ComposerConfig, dict[str, Any]]:
    """The validated ComposerConfig and the plain mapping shipped to the workers."""
    group = group_mapping(config)
    composer = ComposerConfig.from_mapping(group, source="the composer config group (+composer.*)")
    check_runnable(composer)
    check_guard(composer.guard)
    distill = composer.distill
    if distill.weight > 0:
        if distill.teacher not in VERL_TEACHERS:
            raise ConfigError(f"composer.distill.teacher={distill.teacher!r} is not available on VeRL; choose one of "
                              f"{VERL_TEACHERS}")
        rollout_temperature = float(OmegaConf.select(config, "actor_rollout_ref.rollout.temperature", default=1.0))
        if distill.temperature != rollout_temperature:
            raise ConfigError(f"composer.distill.temperature={distill.temperature} but VeRL scales every logit by the "
                              f"rollout temperature ({rollout_temperature}) before the loss sees it: set them equal")
        if OmegaConf.select(config, "actor_rollout_ref.model.use_fused_kernels", default=False):
            raise ConfigError("self-distillation needs the logits: set actor_rollout_ref.model.use_fused_kernels="
                              "false (VeRL's fused kernels never call the logits processor)")
        if distill.normaliser != "global":
            raise ConfigError("composer.distill.normaliser=local is not available on VeRL: VeRL sums micro-batch "
                              "losses and does not tell the loss how many there are; use global (VeRL's counts)")
        if OmegaConf.select(config, "distillation.enabled", default=False):
            raise ConfigError("VeRL's own distillation (distillation.enabled) and composer self-distillation both "
                              "set the actor's loss: enable one of them")
    return composer, group


def check_guard(guard: GuardConfig) -> None:
    """Rule names and thresholds checked on the driver; the in-memory snapshot cadence has no meaning on VeRL, whose
    checkpoints are the guard's snapshots."""
    active_rules(guard)
    if "snapshot_every" in guard.model_fields_set:
        raise ConfigError("composer.guard.snapshot_every is not read on VeRL: the guard goes back to VeRL's own "
                          "checkpoints (the last one confirmed good), so set trainer.save_freq for how often there "
                          "is one")
