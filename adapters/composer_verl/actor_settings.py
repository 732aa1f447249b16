"""What VeRL's own config already says about a composer objective, and the global counts it aggregates with.

VeRL's `ActorConfig` carries clip ratios, the dual-clip constant, SAPO's temperatures and the aggregation
mode. Under VeRL those settings are the source of truth: `composer_<name>` reads them exactly as VeRL's own
loss modes do, so switching `loss_mode` from a VeRL mode to the composer one changes nothing but the name.
Settings VeRL cannot carry keep the objective's defaults, or come from the `composer` config group (read by
the composer trainer), where repeating a VeRL-carried setting with another value is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from composer_core.errors import BatchError, ConfigError
from composer_core.objectives import Normaliser
from composer_core.objectives.base import Objective, ObjectiveParams


def _clip_low(config: Any) -> float:
    return config.clip_ratio if config.clip_ratio_low is None else config.clip_ratio_low


def _clip_high(config: Any) -> float:
    return config.clip_ratio if config.clip_ratio_high is None else config.clip_ratio_high


# objective parameter -> (the VeRL key a user sets, how it is read from an ActorConfig)
ACTOR_CARRIED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "clip_ratio_low": ("actor_rollout_ref.actor.clip_ratio_low", _clip_low),
    "clip_ratio_high": ("actor_rollout_ref.actor.clip_ratio_high", _clip_high),
    "dual_clip_c": ("actor_rollout_ref.actor.clip_ratio_c", lambda config: config.get("clip_ratio_c", 3.0)),
    "tau_pos": ("actor_rollout_ref.actor.tau_pos", lambda config: config.tau_pos),
    "tau_neg": ("actor_rollout_ref.actor.tau_neg", lambda config: config.tau_neg),
}

# Objective settings VeRL has no key for but whose VeRL behaviour is fixed: its cispo clips both sides.
VERL_CONVENTIONS: dict[str, Any] = {"lower_clip": True}


def carried_params(objective: Objective, config: Any) -> dict[str, Any]:
    """The objective's settings that `config` (a VeRL ActorConfig) carries, under the objective's names."""
    fields = objective.params.model_fields
    params = {name: read(config) for name, (_, read) in ACTOR_CARRIED.items() if name in fields}
    params.update({name: value for name, value in VERL_CONVENTIONS.items() if name in fields})
    return params


def objective_params(objective: Objective, config: Any, composer_params: Mapping[str, Any] | None = None
                     ) -> ObjectiveParams:
    """Validated settings: the objective's defaults, then VeRL's config, then the composer group's extras.

    A composer-group value for a setting VeRL's config carries must agree with it; otherwise the error names
    the VeRL key to set instead (two sources for one number is how runs silently diverge).
    """
    carried = carried_params(objective, config)
    extras = dict(composer_params or {})
    for name, value in extras.items():
        if name in ACTOR_CARRIED and name in carried and carried[name] != value:
            key = ACTOR_CARRIED[name][0]
            raise ConfigError(f"composer.policy.objective.params.{name}={value} disagrees with VeRL's {key}="
                              f"{carried[name]}: under VeRL set {key} (VeRL's config is the source of truth "
                              "for the settings it carries) and drop the composer one")
    try:
        return objective.make_params({**carried, **extras})
    except ValidationError as error:
        raise ConfigError(invalid_settings_message(objective.name, error, carried)) from None


def invalid_settings_message(objective_name: str, error: ValidationError, carried: Mapping[str, Any]) -> str:
    """Each refused setting under the key a user sets: VeRL's for what its config carries, else the composer one.

    VeRL's own modes compute with any number (a negative clip ratio moves a bound across 1, a non-positive SAPO
    temperature flips or blows up the gate); the composer twin refuses the values that make the loss meaningless.
    """
    problems = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "?"
        if name in ACTOR_CARRIED and name in carried:
            problems.append(f"{ACTOR_CARRIED[name][0]}={carried[name]}: {problem['msg']}")
        else:
            problems.append(f"composer.policy.objective.params.{name}: {problem['msg']}")
    return f"composer_{objective_name} cannot run with " + "; ".join(problems) + ": set a value in the allowed range"


# the global count each aggregation mode needs once the batch is split across data-parallel ranks
GLOBAL_COUNT = {"token-mean": "batch_num_tokens", "seq-mean-token-sum": "global_batch_size",
                "seq-mean-token-sum-norm": "global_batch_size", "seq-mean-token-mean": "global_batch_size"}


GLOBAL_BATCH_KEYS = frozenset({"dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor"})


def global_normaliser(global_batch_info: Mapping[str, Any], aggregation: str) -> Normaliser:
    """The Normaliser equal to VeRL's `agg_loss(..., **config.global_batch_info)` (data-parallel invariant).

    Like VeRL, a data-parallel run without the global count its aggregation needs is an error: counting each
    rank's shard alone would weight ranks unequally. A key VeRL's agg_loss does not take, a dp_size below 1 and a
    non-positive loss_scale_factor in the mode that divides by it are refused: VeRL would raise on the first and
    silently zero, blow up or negate the loss on the others.
    """
    unknown = sorted(set(global_batch_info) - GLOBAL_BATCH_KEYS)
    if unknown:
        raise BatchError(f"global_batch_info has {unknown}, which VeRL's agg_loss does not take (it knows "
                         f"{sorted(GLOBAL_BATCH_KEYS)}): a newer VeRL? The composer loss cannot tell how to aggregate")
    dp_size = global_batch_info.get("dp_size", 1)
    if dp_size is None or dp_size < 1:
        raise BatchError(f"global_batch_info dp_size={dp_size!r}: expected the data-parallel size, an integer >= 1")
    needed = GLOBAL_COUNT.get(aggregation)
    if dp_size > 1 and needed and global_batch_info.get(needed) is None:
        raise BatchError(f"loss_agg_mode {aggregation!r} with dp_size={dp_size} needs the global {needed} in "
                         "the actor's global_batch_info (VeRL's actor fills it from the batch)")
    scale_factor = global_batch_info.get("loss_scale_factor")
    if aggregation == "seq-mean-token-sum-norm" and scale_factor is not None and scale_factor <= 0:
        raise ConfigError(f"actor_rollout_ref.actor.loss_scale_factor={scale_factor}: seq-mean-token-sum-norm "
                          "divides the loss by it, so it must be a positive length (the longest response, or null "
                          "for the padded length)")
    return Normaliser(num_tokens=global_batch_info.get("batch_num_tokens"),
                      num_sequences=global_batch_info.get("global_batch_size"),
                      max_length=scale_factor, scale=dp_size)
