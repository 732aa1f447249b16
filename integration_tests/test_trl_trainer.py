"""ComposerGRPOTrainer against TRL's own GRPOTrainer, end to end through TRL's training loop.

Both trainers start from the same tiny model and seed, generate, score and step for real; with channels
2 and 3 off the composer trainer must leave exactly the same parameters as TRL for each loss type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch
from datasets import Dataset
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from trl import GRPOConfig, GRPOTrainer

from composer_core import ComposerConfig, ConfigError, compute_advantages
from composer_trl.trainer import ComposerGRPOTrainer

PROMPTS = ("what is two plus two", "solve one add one", "how to fix the error", "which file to read")


def count_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A verifiable reward with spread inside a group: how many number words the completion says."""
    numbers = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}
    texts = [completion[0]["content"] if isinstance(completion, list) else completion for completion in completions]
    return [float(sum(word in numbers for word in text.split())) for text in texts]


def train(trainer_class: type[GRPOTrainer], model_dir: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path,
          settings: dict[str, Any], **extra: Any) -> tuple[dict[str, torch.Tensor], GRPOTrainer]:
    """Two SGD steps of num_iterations=2 (so ratios leave 1 and clipping matters); the final parameters. SGD, not
    Adam: Adam turns a 1e-9 rounding difference in a near-zero gradient into a full-size step."""
    args = GRPOConfig(output_dir=str(tmp_path / trainer_class.__name__), bf16=False, use_cpu=True, report_to="none",
                      max_completion_length=6, num_generations=4, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2, num_iterations=2, max_steps=2, learning_rate=0.5, seed=7,
                      optim="sgd", logging_steps=1, save_strategy="no", temperature=1.0, **settings)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": text}] for text in PROMPTS]})
    trainer = trainer_class(model=model, reward_funcs=count_reward, args=args, train_dataset=dataset,
                            processing_class=tokenizer, **extra)
    trainer.train()
    return {name: param.detach().clone() for name, param in trainer.model.named_parameters()}, trainer


CASES = {
    "grpo": {"loss_type": "grpo"},
    "bnpo": {"loss_type": "bnpo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "dapo": {"loss_type": "dapo", "epsilon_high": 0.28},
    "cispo": {"loss_type": "cispo", "epsilon_high": 1.1},
    "sapo": {"loss_type": "sapo"},
    "gspo": {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4},
    "grpo_kl": {"loss_type": "grpo", "beta": 0.1},
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_parameters_as_trl_after_training(case: str, tiny_model_dir: Path,
                                               tiny_tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    expected, _ = train(GRPOTrainer, tiny_model_dir, tiny_tokenizer, tmp_path, CASES[case])
    actual, trainer = train(ComposerGRPOTrainer, tiny_model_dir, tiny_tokenizer, tmp_path, CASES[case])
    assert any(not torch.equal(expected[name], initial[name]) for name in expected), "training must move weights"
    assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    logged = [entry for entry in trainer.state.log_history if "composer/policy/loss" in entry]
    assert logged, "the composer metrics must reach TRL's log"


def test_composer_config_uses_its_own_advantage_estimator(tiny_model_dir: Path,
                                                           tiny_tokenizer: PreTrainedTokenizerBase,
                                                           tmp_path: Path) -> None:
    config = ComposerConfig.from_mapping({"policy": {"objective": {"name": "dr_grpo"},
                                                     "advantage": {"name": "rloo"}}})
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recording(ComposerGRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
            output = super()._generate_and_score_completions(inputs)
            rewards = self.scoring.rewards_per_func[:, 0]
            seen.append((rewards, output["advantages"]))
            return output

    train(Recording, tiny_model_dir, tiny_tokenizer, tmp_path, {"loss_type": "grpo"}, composer_config=config)
    rewards, advantages = seen[0]
    groups = torch.arange(rewards.shape[0]) // 4
    expected = compute_advantages(config.policy, rewards, torch.ones(rewards.shape[0], 1, dtype=torch.bool),
                                  groups)[:, 0]
    assert_close(advantages, expected)
    assert rewards.unique().numel() > 1, "rewards must vary for the advantages to mean anything"


def test_trl_settings_the_composer_loss_would_ignore_are_refused(tiny_model_dir: Path,
                                                                  tiny_tokenizer: PreTrainedTokenizerBase,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top_entropy_quantile=0.5 acts inside TRL's own loss"):
        train(ComposerGRPOTrainer, tiny_model_dir, tiny_tokenizer, tmp_path, {"top_entropy_quantile": 0.5})
    config = ComposerConfig.from_mapping({"policy": {"kl": {"coef": 0.05}}})
    with pytest.raises(ConfigError, match=r"GRPOConfig.beta=0.0 but the composer config needs 0.05"):
        train(ComposerGRPOTrainer, tiny_model_dir, tiny_tokenizer, tmp_path, {}, composer_config=config)
    with pytest.raises(ConfigError, match="loss_type 'vespo' has no composer objective"):
        train(ComposerGRPOTrainer, tiny_model_dir, tiny_tokenizer, tmp_path, {"loss_type": "vespo"})


def test_bad_rewards_and_data_stop_before_any_step(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
                                                   tmp_path: Path) -> None:
    def broken(completions: list[Any], **kwargs: Any) -> list[float]:
        raise KeyError("answer")

    def not_a_number(completions: list[Any], **kwargs: Any) -> list[float]:
        return [float("nan")] * len(completions)

    def too_few(completions: list[Any], **kwargs: Any) -> list[float]:
        return [0.0]

    prompts = [[{"role": "user", "content": "two plus two"}]] * 4
    cases = ((broken, {"prompt": prompts}, "reward function 'broken' raised KeyError"),
             (not_a_number, {"prompt": prompts}, "reward function 'not_a_number' returned nan"),
             (too_few, {"prompt": prompts}, "reward function 'too_few' returned 1 rewards for 2 completions"),
             (count_reward, {"question": prompts}, "no 'prompt' column; columns: \\['question'\\]"))
    for reward, columns, message in cases:
        args = GRPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none",
                          max_completion_length=4, num_generations=4, per_device_train_batch_size=4, max_steps=1)
        with pytest.raises(ConfigError, match=message):
            ComposerGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                                reward_funcs=reward, train_dataset=Dataset.from_dict(columns),
                                processing_class=tiny_tokenizer)
