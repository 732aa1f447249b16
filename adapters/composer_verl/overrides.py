"""A ComposerConfig as the hydra overrides of an existing VeRL job (`--print-backend-config`).

VeRL's own keys carry what VeRL can express (loss mode, aggregation, clip ratios, KL, batch shape); the
rest goes into the `composer` group (`+composer.*`), which the composer trainer reads. Anything VeRL cannot
run is an error here, before a cluster is booked.
"""

from __future__ import annotations

import shlex

from composer_core.config import ComposerConfig, DistillConfig
from composer_core.errors import ConfigError
from composer_verl.actor_settings import ACTOR_CARRIED
from composer_verl.advantages import estimator_name
from composer_verl.hydra_text import hydra_value
from composer_verl.policy_loss import loss_mode_name
from composer_verl.twins import VERL_TWINS
from composer_verl.user_run import check_honoured, user_run_notes, user_run_overrides

ACTOR = "actor_rollout_ref.actor"
# composer KL estimator -> VeRL's kl_loss_type / kl_penalty name
VERL_KL_TYPES = {"k1": "k1", "k2": "k2", "k3": "low_var_kl", "abs": "abs"}
# self-distillation supports the composer trainer can feed from precomputed teacher tensors
VERL_DISTILL_SUPPORTS = ("student_topk", "teacher_topk", "sampled_token")


# Dr.GRPO's constant length is the job's own response length, never the demo's (an interpolation hydra resolves)
LOSS_SCALE_FACTOR = f"{ACTOR}.loss_scale_factor=${{data.max_response_length}}"


def check_runnable(config: ComposerConfig) -> None:
    """Refuse what the VeRL backend cannot run, naming the setting and the way out."""
    if config.preference.weight > 0 and config.preference.beta > 0:
        raise ConfigError("preference.weight > 0: the trace-replay DPO channel (composer-core's own research "
                          "channel) is not available on the VeRL backend yet; train it on the trl backend or "
                          "set preference.weight to 0")
    if config.policy.kl.importance_weighted:
        raise ConfigError("policy.kl.importance_weighted has no VeRL equivalent (TRL's use_bias_correction_kl); "
                          "set it to false for the VeRL backend")
    if config.distill.weight > 0 and config.distill.support not in VERL_DISTILL_SUPPORTS:
        raise ConfigError(f"distill.support={config.distill.support!r}: on VeRL the teacher is computed before "
                          "the update and shipped as top-K tensors (the full vocabulary per token would not fit), so "
                          f"set distill.support to one of {', '.join(VERL_DISTILL_SUPPORTS)} in a config file and "
                          "pass it with --config (without --config the job is the embedded TRL demo, whose tiny "
                          "vocabulary allows 'full'; `composer-core config` prints it as a starting point)")
    resolved = config.policy.objective.resolve()
    twin = VERL_TWINS.get(resolved.objective.name)
    if twin and twin.forced_aggregation and resolved.aggregation != twin.forced_aggregation:
        raise ConfigError(f"policy.objective.aggregation={resolved.aggregation!r}: VeRL's {twin.mode} (and its twin "
                          f"composer_{resolved.objective.name}) always aggregates {twin.forced_aggregation}; set "
                          "that aggregation, or train on the trl backend")


def policy_overrides(config: ComposerConfig) -> list[str]:
    """The loss mode, aggregation, VeRL-carried objective settings, estimator and KL."""
    resolved = config.policy.objective.resolve()
    params = resolved.params.model_dump()
    lines = [f"{ACTOR}.policy_loss.loss_mode={loss_mode_name(resolved.objective.name)}",
             f"{ACTOR}.loss_agg_mode={resolved.aggregation}"]
    if resolved.aggregation == "seq-mean-token-sum-norm":
        lines.append(LOSS_SCALE_FACTOR)
    for name, (key, _) in ACTOR_CARRIED.items():
        if name in params and params[name] is not None:
            lines.append(f"{key}={hydra_value(params[name])}")
    estimator, _ = config.policy.advantage.resolve(resolved.objective.name)
    lines.append(f"algorithm.adv_estimator={estimator_name(estimator.name)}")
    kl = config.policy.kl
    kl_type = VERL_KL_TYPES[kl.estimator] + ("+" if kl.straight_through else "")
    in_loss, in_reward = kl.coef > 0 and kl.placement == "loss", kl.coef > 0 and kl.placement == "reward"
    lines.append(f"{ACTOR}.use_kl_loss={hydra_value(in_loss)}")
    if in_loss:
        lines += [f"{ACTOR}.kl_loss_coef={kl.coef}", f"{ACTOR}.kl_loss_type={kl_type}"]
    lines.append(f"algorithm.use_kl_in_reward={hydra_value(in_reward)}")
    if in_reward:
        lines += [f"algorithm.kl_ctrl.kl_coef={kl.coef}", f"algorithm.kl_penalty={kl_type}"]
    return lines


def composer_group(config: ComposerConfig) -> list[str]:
    """`+composer.*` overrides: objective and estimator settings VeRL has no key for, and self-distillation."""
    extras = {name: value for name, value in config.policy.objective.params.items() if name not in ACTOR_CARRIED}
    lines = [f"+composer.policy.objective.params.{name}={hydra_value(value)}" for name, value in extras.items()]
    lines += [f"+composer.policy.advantage.params.{name}={hydra_value(value)}"
              for name, value in config.policy.advantage.params.items()]
    if config.distill.weight > 0:
        defaults = DistillConfig().model_dump()
        for name, value in config.distill.model_dump().items():
            if name == "weight" or value != defaults[name]:
                if isinstance(value, dict):
                    lines += [f"+composer.distill.{name}.{key}={hydra_value(item)}" for key, item in value.items()]
                else:
                    lines.append(f"+composer.distill.{name}={hydra_value(value)}")
    return lines


def run_overrides(config: ComposerConfig) -> list[str]:
    """Batch shape, learning rate, length, steps and saving, then the user's own run (composer_verl.user_run)."""
    run = config.run
    if run.gradient_accumulation_steps != 1:
        raise ConfigError(f"run.gradient_accumulation_steps={run.gradient_accumulation_steps}: VeRL accumulates "
                          f"over micro-batches of {ACTOR}.ppo_micro_batch_size_per_gpu samples, which depends on the "
                          "job's GPU count; leave run.gradient_accumulation_steps at 1 and set that key in the job")
    lines = [f"data.train_batch_size={run.prompts_per_step}",
             f"{ACTOR}.ppo_mini_batch_size={run.prompts_per_step}",
             f"actor_rollout_ref.rollout.n={run.num_generations}",
             f"data.max_response_length={run.max_completion_length}",
             f"{ACTOR}.optim.lr={run.learning_rate}",
             f"trainer.total_training_steps={run.max_steps}",
             f"trainer.save_freq={run.save_steps}",
             f"trainer.default_local_dir={hydra_value(run.output_dir)}",
             f"data.seed={run.seed}",
             f"{ACTOR}.data_loader_seed={run.seed}"]
    return lines + user_run_overrides(config)


def verl_overrides(config: ComposerConfig, *, run_settings: bool = False) -> list[str]:
    """The overrides in the order a user reads them: trainer, policy, composer group, and the run settings only
    when asked (pasted into an existing job, the demo's learning rate or batch size would silently replace its own)."""
    check_runnable(config)
    check_honoured(config)
    trainer = ["trainer.use_v1=true", "trainer.v1.trainer_mode=composer"] if config.distill.weight > 0 else []
    run = run_overrides(config) if run_settings else []
    return trainer + policy_overrides(config) + composer_group(config) + run


def render(config: ComposerConfig, *, run_settings: bool = False) -> str:
    """The overrides to append to `python -m verl.trainer.main_ppo \\`: one per line, quoted for the shell where
    needed and continued with a backslash, then comment lines, so the whole block pastes into a shell as it is."""
    lines = [shlex.quote(line) for line in verl_overrides(config, run_settings=run_settings)]
    notes = ["# composer-core -> VeRL 0.9 hydra overrides, for the end of your verl.trainer.main_ppo command.",
             "# The cluster layout (GPUs, micro-batches, rollout engine) stays your job's own."]
    if run_settings:
        notes += user_run_notes(config)
    else:
        notes.append("# Only what the composer loss needs: model, data files, reward function, learning rate, batch "
                     "shape, lengths, steps, saving and logging stay your job's own (--with-run-settings adds the "
                     "config's).")
    params = config.policy.objective.resolve().params.model_dump()
    if "dual_clip_c" in params and params["dual_clip_c"] is None:
        notes.append("# No dual clip in this config, but VeRL always applies clip_ratio_c (default 3.0) to "
                     "negative advantages.")
    if config.distill.weight == 0:
        notes.append("# Channel 1 only: any VeRL trainer runs it; the composer trainer is needed for distill.")
    return "\n".join([f"{line} \\" for line in lines[:-1]] + lines[-1:] + notes)
