"""`ComposerGRPOTrainer`: TRL's GRPOTrainer with composer-core's loss.

It takes GRPOTrainer's arguments plus an optional `composer_config`. Without one it follows
`GRPOConfig.loss_type` through the composer objectives (and gives TRL's loss and gradients); with one it
uses any registered objective, advantage estimator and KL placement, and channels 2 (self-distillation)
and 3 (preference pairs) when their weights are positive. TRL's generation, scoring, batching and
distributed engine are used as they are: the subclass only adds tensors to the scored batch and replaces
the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from trl import GRPOTrainer

from composer_core import ComposerConfig, ComposerLoss, Normaliser, PolicyInputs, compute_advantages
from composer_core.errors import ConfigError
from composer_core.objectives.kl import kl_estimate
from composer_trl.feedback import FeedbackRecorder
from composer_trl.grpo_mapping import composer_config_from_grpo, grpo_overrides, trl_normaliser

UNSUPPORTED_TRL_SETTINGS = {  # TRL features that live inside TRL's own loss, which this trainer replaces
    "top_entropy_quantile": 1.0, "off_policy_mask_threshold": None, "entropy_coef": 0.0,
    "use_adaptive_entropy": False, "delta": None,
}


@dataclass(frozen=True)
class Scoring:
    """What TRL scored in the current generation round, kept for advantages and teacher contexts."""

    inputs: list[dict[str, Any]]
    prompts: list[Any]
    completions: list[Any]
    rewards_per_func: torch.Tensor
    feedback: list[str | None]


class ComposerGRPOTrainer(GRPOTrainer):
    """A drop-in GRPOTrainer whose loss is composer-core's three-channel loss."""

    def __init__(self, model: Any, reward_funcs: Any = None, args: Any = None, *positional: Any,
                 composer_config: ComposerConfig | None = None, **kwargs: Any) -> None:
        self.feedback = FeedbackRecorder()
        super().__init__(model, self.feedback.wrap(reward_funcs), args, *positional, **kwargs)
        self.explicit_config = composer_config is not None
        config = composer_config or composer_config_from_grpo(self.args)
        self._check_trl_settings(config)
        if self.args.mask_truncated_completions and not config.policy.allow_empty_rows:
            config = config.model_copy(update={"policy": config.policy.model_copy(update={"allow_empty_rows": True})})
        self.composer_config = config
        self.composer_loss = ComposerLoss(config)
        self.scoring: Scoring | None = None

    def _check_trl_settings(self, config: ComposerConfig) -> None:
        """Refuse TRL settings the composer loss would silently ignore, and a GRPOConfig that disagrees."""
        for name, default in UNSUPPORTED_TRL_SETTINGS.items():
            if getattr(self.args, name, default) != default:
                raise ConfigError(f"GRPOConfig.{name}={getattr(self.args, name)!r} acts inside TRL's own loss, which "
                                  f"ComposerGRPOTrainer replaces; leave it at {default!r}")
        for name, wanted in grpo_overrides(config).items():
            if getattr(self.args, name) != wanted:
                raise ConfigError(f"GRPOConfig.{name}={getattr(self.args, name)!r} but the composer config needs "
                                  f"{wanted!r}; set it in GRPOConfig (see `composer-core train "
                                  "--print-backend-config`)")

    # ---- scoring: keep what the teacher contexts and the composer advantages need --------------------------------

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        self.feedback.reset(len(prompts))
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.scoring = Scoring(inputs, prompts, completions, rewards_per_func, list(self.feedback.feedback))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if self.explicit_config:
            output["advantages"] = self._composer_advantages(output)
        return output

    def _composer_advantages(self, output: dict[str, Any]) -> torch.Tensor:
        """Advantages from the composer estimator over the rewards of every process (groups are consecutive
        runs of num_generations), with the KL penalty in the reward when configured; this process's slice."""
        assert self.scoring is not None
        policy = self.composer_config.policy
        rewards = (self.scoring.rewards_per_func * self.reward_weights.to(self.scoring.rewards_per_func.device)
                   ).nansum(dim=1)
        if policy.kl.coef > 0 and policy.kl.placement == "reward":
            rewards = rewards - self.accelerator.gather(self._sequence_kl(output))
        groups = torch.arange(rewards.shape[0], device=rewards.device) // self.num_generations
        one_token = torch.ones(rewards.shape[0], 1, dtype=torch.bool, device=rewards.device)
        advantages = compute_advantages(policy, rewards, one_token, groups)[:, 0]
        local = len(self.scoring.prompts)
        start = self.accelerator.process_index * local
        return advantages[start:start + local]

    def _sequence_kl(self, output: dict[str, Any]) -> torch.Tensor:
        """coef * sum_t KL_t(behaviour || reference) per local sequence, for KL in the reward."""
        kl = self.composer_config.policy.kl
        if "ref_per_token_logps" not in output:
            raise ConfigError("KL in the reward needs reference log-probs: set GRPOConfig.beta to kl.coef")
        behaviour = output.get("old_per_token_logps")
        if behaviour is None:
            with torch.no_grad():
                behaviour = self._completion_log_probs(self.model, output)
        per_token = kl_estimate(behaviour, output["ref_per_token_logps"], kl.estimator, clamp=kl.clamp,
                                log_ratio_clamp=kl.log_ratio_clamp)
        mask = output["completion_mask"].bool()
        return kl.coef * torch.where(mask, per_token, 0.0).sum(-1)

    # ---- the loss ------------------------------------------------------------------------------------------------

    def _completion_log_probs(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """Per-token log-probs of the completion through TRL's own forward (temperature included)."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        log_probs, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                                  inputs["completion_ids"].size(1))
        return log_probs

    def _loss_mask(self, inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"]
        return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask

    def _normaliser(self, inputs: dict[str, Any]) -> Normaliser:
        training = self.model.training
        return trl_normaliser(num_items_in_batch=inputs["num_items_in_batch"],
                              num_processes=self.accelerator.num_processes,
                              local_sequences=inputs["completion_ids"].size(0),
                              accumulation_steps=self.current_gradient_accumulation_steps if training else 1,
                              steps_per_generation=self.args.steps_per_generation,
                              max_completion_length=self.max_completion_length, training=training)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        mode = "train" if self.model.training else "eval"
        advantages = inputs["advantages"]
        policy = PolicyInputs(self._completion_log_probs(model, inputs), advantages, self._loss_mask(inputs),
                              old_log_prob=inputs.get("old_per_token_logps"),
                              ref_log_prob=inputs.get("ref_per_token_logps"),
                              rollout_weights=inputs.get("importance_sampling_ratio"))
        output = self.composer_loss(policy=policy, normaliser=self._normaliser(inputs))
        for name, value in output.metrics.items():
            self._metrics[mode][f"composer/{name}"].append(value)
        return output.loss
