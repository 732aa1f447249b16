"""How TRL's GRPOConfig and a ComposerConfig map onto each other, and TRL's loss normalisers.

With no composer configuration, `GRPOConfig.loss_type` (and its epsilon, importance-sampling level,
SAPO temperatures and beta) are translated into the composer objective that reproduces TRL's loss.
"""

from __future__ import annotations

from typing import Any

from composer_core import ComposerConfig, Normaliser
from composer_core.errors import ConfigError

LOSS_TYPE_OBJECTIVES = {"grpo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr_grpo", "dapo": "dapo", "cispo": "cispo",
                        "sapo": "sapo"}
# TRL's own aggregation per loss_type, which a sequence-level (GSPO) ratio keeps
LOSS_TYPE_AGGREGATION = {"grpo": ("seq-mean-token-mean", "local"), "sapo": ("seq-mean-token-mean", "local"),
                         "bnpo": ("token-mean", "local"), "dr_grpo": ("seq-mean-token-sum-norm", "global"),
                         "dapo": ("token-mean", "global"), "cispo": ("token-mean", "global")}
# the GRPOConfig settings that the composer objective and KL are derived from
TRL_LOSS_SETTINGS = ("loss_type", "importance_sampling_level", "epsilon", "epsilon_high", "sapo_temperature_pos",
                     "sapo_temperature_neg", "beta", "use_bias_correction_kl")


def _epsilon_high(args: Any) -> str:
    if args.epsilon_high is None:
        return f"GRPOConfig.epsilon_high=None (TRL then uses epsilon={args.epsilon!r})"
    return f"GRPOConfig.epsilon_high={args.epsilon_high!r}"


def grpo_setting_problems(args: Any) -> list[str]:
    """What is wrong with these GRPOConfig values for TRL's loss, in TRL's own setting names (empty: fine)."""
    high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    problems = []
    if args.epsilon < 0:
        problems.append(f"GRPOConfig.epsilon={args.epsilon!r} must be >= 0")
    if args.loss_type == "cispo" and args.importance_sampling_level != "sequence" and high < 1:
        problems.append(f"{_epsilon_high(args)}: loss_type='cispo' caps the importance weight at epsilon_high, "
                        "and ComposerGRPOTrainer needs that cap >= 1; set GRPOConfig.epsilon_high (TRL recommends 5.0 "
                        "for cispo)")
    elif high < 0:
        problems.append(f"{_epsilon_high(args)} must be >= 0")
    if args.loss_type == "sapo":
        problems += [f"GRPOConfig.{name}={getattr(args, name)!r} must be > 0"
                     for name in ("sapo_temperature_pos", "sapo_temperature_neg") if getattr(args, name) <= 0]
    if args.beta < 0:
        problems.append(f"GRPOConfig.beta={args.beta!r} must be >= 0")
    return problems


def objective_from_grpo(args: Any) -> dict[str, Any]:
    """The composer objective section that reproduces TRL's loss for these GRPOConfig settings."""
    loss_type = args.loss_type
    if loss_type not in LOSS_TYPE_OBJECTIVES:
        raise ConfigError(f"GRPOConfig.loss_type {loss_type!r} has no composer objective; supported: "
                          f"{', '.join(LOSS_TYPE_OBJECTIVES)}. Pass a composer config to use another objective")
    low = args.epsilon
    high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    aggregation, scope = LOSS_TYPE_AGGREGATION[loss_type]
    if args.importance_sampling_level == "sequence":
        params: dict[str, Any] = {"clip_ratio_low": low, "clip_ratio_high": high, "log_ratio_max": None}
        return {"name": "gspo", "aggregation": aggregation, "normaliser": scope, "params": params}
    if loss_type == "cispo":
        params = {"clip_ratio_high": high - 1, "lower_clip": False, "log_ratio_clamp": None}
    elif loss_type == "sapo":
        params = {"tau_pos": args.sapo_temperature_pos, "tau_neg": args.sapo_temperature_neg, "log_ratio_clamp": None}
    else:
        params = {"clip_ratio_low": low, "clip_ratio_high": high, "log_ratio_clamp": None}
    return {"name": LOSS_TYPE_OBJECTIVES[loss_type], "aggregation": aggregation, "normaliser": scope,
            "params": params}


def composer_config_from_grpo(args: Any) -> ComposerConfig:
    """A ComposerConfig (policy channel only) equal to TRL's loss for this GRPOConfig.

    Every refusal names TRL's own GRPOConfig settings: the composer names they map onto would not tell a TRL
    user what to change.
    """
    problems = grpo_setting_problems(args)
    if problems:
        raise ConfigError(f"GRPOConfig(loss_type={args.loss_type!r}) cannot be used: {'; '.join(problems)}")
    kl = {"coef": args.beta, "estimator": "k3", "importance_weighted": bool(args.use_bias_correction_kl)}
    objective = objective_from_grpo(args)
    try:
        return ComposerConfig.from_mapping({"policy": {"objective": objective, "kl": kl}}, source="GRPOConfig")
    except ConfigError as error:
        settings = ", ".join(f"{name}={getattr(args, name)!r}" for name in TRL_LOSS_SETTINGS)
        raise ConfigError(f"GRPOConfig({settings}) has no valid composer equivalent (objective "
                          f"{objective['name']!r}): {error}; change these GRPOConfig settings") from None


def grpo_overrides(config: ComposerConfig) -> dict[str, Any]:
    """GRPOConfig fields a ComposerConfig implies. The composer loss replaces TRL's, so only the fields that
    change what TRL computes before the loss matter: `beta` (TRL loads the reference model and its log-probs
    only when beta != 0) and `temperature` (the sampling temperature the distillation divides by)."""
    overrides: dict[str, Any] = {"beta": config.policy.kl.coef}
    if config.distill.weight > 0:
        overrides["temperature"] = config.distill.temperature
    return overrides


def trl_normaliser(*, num_items_in_batch: Any, num_processes: int, local_sequences: int, accumulation_steps: int,
                   steps_per_generation: int, max_completion_length: int, training: bool) -> Normaliser:
    """Denominators that reproduce TRL's: a global token count per micro-batch (num_items_in_batch spans the
    generation batch of every process), the local sequence count, TRL's max_completion_length, and a
    1/accumulation scale (TRL divides by its gradient-accumulation steps, or scales its token count by them)."""
    if not training:
        return Normaliser(num_tokens=num_items_in_batch / num_processes, num_sequences=local_sequences,
                          max_length=max_completion_length)
    return Normaliser(num_tokens=num_items_in_batch / num_processes / steps_per_generation,
                      num_sequences=local_sequences, max_length=max_completion_length,
                      scale=1.0 / accumulation_steps)
