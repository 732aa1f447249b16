"""torchtune's loss arguments <-> composer-core's policy config, in both directions.

torchtune's GRPO losses take `epsilon` (both clip bounds) and `kl_coeff` (k3 KL in the loss). Here those names
set the composer objective's `clip_ratio_low` / `clip_ratio_high` and `policy.kl.coef`; every other setting keeps
its composer name. `loss_arguments(config)` is the inverse: the constructor arguments that rebuild an experiment
config's loss, which `loss_section` prints as the `loss:` section of a torchtune YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from composer_core import ComposerConfig, ConfigError, registries
from composer_core.config import KLConfig
from composer_core.objectives.base import Objective
from composer_core.objectives.surrogates import ClipParams

# torchtune's GRPOLoss / GRPOSimpleLoss defaults (torchtune/dev/grpo/loss.py on GitHub main)
TORCHTUNE_EPSILON = 0.1
TORCHTUNE_KL_COEFF = 0.1
CLIP_BOUNDS = ("clip_ratio_low", "clip_ratio_high")
# composer KLConfig field -> the constructor argument that sets it (coef is torchtune's kl_coeff)
KL_ARGUMENTS = {"coef": "kl_coeff", "estimator": "kl_estimator", "placement": "kl_placement", "clamp": "kl_clamp",
                "log_ratio_clamp": "kl_log_ratio_clamp", "straight_through": "kl_straight_through",
                "importance_weighted": "kl_importance_weighted"}
GRPO_COMPONENT = "composer_torchtune.ComposerGRPOLoss"
COMPOSITE_COMPONENT = "composer_torchtune.ComposerCompositeLoss"


def _objective(name: str, owner: str) -> Objective:
    try:
        objective: Objective = registries().objectives.get(name)
    except ConfigError as error:
        raise ConfigError(f"{owner}: {error}") from None
    return objective


def clip_bounds(objective: Objective, epsilon: float | None, epsilon_high: float | None,
                owner: str) -> dict[str, float]:
    """The objective's clip bounds from torchtune's names.

    epsilon None: torchtune's 0.1 for the PPO-clip objectives (settings `ClipParams`: grpo, dr_grpo, bnpo, dapo,
    ppo), so that the default loss is torchtune's `GRPOLoss()`; other objectives keep their own bounds (gspo's
    3e-4 / 4e-4 on a sequence ratio, cispo's cap). epsilon_high None: equal to the lower bound.
    """
    if not set(CLIP_BOUNDS) <= set(objective.params.model_fields):
        given = [name for name, value in (("epsilon", epsilon), ("epsilon_high", epsilon_high)) if value is not None]
        if given:
            raise ConfigError(f"{owner}: objective {objective.name!r} has no clip bounds, so {' and '.join(given)} "
                              "cannot apply; remove them")
        return {}
    if epsilon is None:
        if not issubclass(objective.params, ClipParams):
            return {} if epsilon_high is None else {"clip_ratio_high": epsilon_high}
        epsilon = TORCHTUNE_EPSILON
    return {"clip_ratio_low": epsilon, "clip_ratio_high": epsilon if epsilon_high is None else epsilon_high}


def objective_settings(objective_name: str, epsilon: float | None, epsilon_high: float | None,
                       objective_params: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The objective's `params`: clip bounds from epsilon / epsilon_high, then its own other settings.

    A name the objective does not have, or a clip bound under its composer name, is an error listing what this
    loss accepts (one name per setting: two would let a YAML say two different things).
    """
    objective = _objective(objective_name, owner)
    own = [name for name in objective.params.model_fields if name not in CLIP_BOUNDS]
    unknown = sorted(set(objective_params) - set(own))
    if unknown:
        bounds = "epsilon, epsilon_high (its clip bounds), " if set(CLIP_BOUNDS) <= set(objective.params.model_fields) \
            else ""
        hint = " (use torchtune's epsilon / epsilon_high)" if set(unknown) & set(CLIP_BOUNDS) else ""
        raise ConfigError(f"{owner} got {', '.join(unknown)}{hint}: neither an argument of the loss nor a setting "
                          f"of objective {objective_name!r}, which accepts {bounds}{', '.join(own) or 'nothing else'}")
    return {**clip_bounds(objective, epsilon, epsilon_high, owner), **objective_params}


def composer_config(policy: Mapping[str, Any], distill: Mapping[str, Any] | None, owner: str) -> ComposerConfig:
    """The validated experiment config of the loss; errors name the loss class."""
    return ComposerConfig.from_mapping({"policy": dict(policy), "distill": dict(distill or {})}, source=owner)


def loss_arguments(config: ComposerConfig) -> dict[str, Any]:
    """Constructor arguments of the loss component that reproduce `config`'s channels 1 and 2.

    Clip bounds come out as epsilon / epsilon_high (the objective's resolved values, so the YAML does not depend
    on torchtune's default); other objective settings, aggregation, normaliser and KL extras only where the
    config sets them.
    """
    if config.preference.weight > 0 and config.preference.beta > 0:
        raise ConfigError("the torchtune loss components have no trace-replay DPO channel (channel 3): set "
                          "preference.weight to 0 for --backend torchtune")
    policy = config.policy
    resolved = policy.objective.resolve()
    arguments: dict[str, Any] = {"objective": resolved.objective.name}
    params = resolved.params.model_dump()
    if set(CLIP_BOUNDS) <= set(params):
        arguments["epsilon"] = params["clip_ratio_low"]
        if params["clip_ratio_high"] != params["clip_ratio_low"]:
            arguments["epsilon_high"] = params["clip_ratio_high"]
    defaults = KLConfig()
    for field, argument in KL_ARGUMENTS.items():
        value = getattr(policy.kl, field)
        if field in ("coef", "estimator") or value != getattr(defaults, field):
            arguments[argument] = value
    for key in ("aggregation", "normaliser"):
        if getattr(policy.objective, key) is not None:
            arguments[key] = getattr(policy.objective, key)
    if policy.allow_empty_rows:
        arguments["allow_empty_rows"] = True
    arguments.update({name: value for name, value in policy.objective.params.items() if name not in CLIP_BOUNDS})
    if config.distill.weight > 0 or policy.weight != 1.0:
        arguments["policy_weight"] = policy.weight
        arguments["distill"] = config.distill.model_dump(mode="json", exclude_defaults=True) | {
            "weight": config.distill.weight}
    return arguments


def loss_section(config: ComposerConfig) -> dict[str, Any]:
    """The `loss:` section of a torchtune config for `config`: the composite loss when self-distillation is on
    (or the policy term is weighted), else the GRPO loss."""
    arguments = loss_arguments(config)
    component = COMPOSITE_COMPONENT if "distill" in arguments else GRPO_COMPONENT
    return {"_component_": component, **arguments}
