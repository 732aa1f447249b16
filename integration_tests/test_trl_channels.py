"""ComposerGRPOTrainer with channel 2 (self-distillation) and channel 3 (preference pairs) on: real TRL
training steps on a tiny local model, checking what reaches the loss."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from trl import GRPOConfig

from composer_core import ComposerConfig, ConfigError, EmptyDistillMaskWarning
from composer_trl.trainer import ComposerGRPOTrainer

PROMPTS = ("what is two plus two", "solve one add one")


class Feedback:
    """A reward with feedback: 1 when the completion says "four", else 0 and a sentence saying so."""

    def __init__(self, feedback: bool = True) -> None:
        self.__name__ = "says_four"
        self.feedback = feedback

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[Any]:
        texts = [completion[-1]["content"] for completion in completions]
        return [Scored(1.0 if "four" in text.split() else 0.0,
                       None if "four" in text.split() or not self.feedback else "the answer is four")
                for text in texts]


class Scored:
    def __init__(self, reward: float, feedback: str | None) -> None:
        self.reward, self.feedback = reward, feedback


def make_trainer(model_dir: Path, tokenizer: PreTrainedTokenizerBase, tmp_path: Path, config: dict[str, Any],
                 reward: Any, hints: bool = True, **extra: Any) -> ComposerGRPOTrainer:
    composer = ComposerConfig.from_mapping(config)
    args = GRPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", max_completion_length=5,
                      num_generations=4, per_device_train_batch_size=8, max_steps=2, learning_rate=0.05, seed=3,
                      logging_steps=1, save_strategy="no", temperature=composer.distill.temperature,
                      beta=composer.policy.kl.coef)
    rows = [{"prompt": [{"role": "system", "content": "answer with a number"}, {"role": "user", "content": text}],
             **({"hint": "two and two is four"} if hints else {})} for text in PROMPTS]
    return ComposerGRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=reward, args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                               composer_config=composer, **extra)


SD = {"distill": {"weight": 1.0, "support": "full", "teacher": "ema", "teacher_rate": 0.5}}


def test_teacher_rows_hold_the_hinted_context_and_the_students_own_tokens(tiny_model_dir: Path,
                                                                          tiny_tokenizer: PreTrainedTokenizerBase,
                                                                          tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback())
    seen: list[dict[str, Any]] = []
    original = trainer._teacher_rows
    trainer._teacher_rows = lambda output: seen.append({**output, **original(output)}) or seen[-1]  # type: ignore
    trainer.train()
    rows = seen[0]
    completions = rows["completion_ids"]
    teacher = rows["teacher_input_ids"]
    assert torch.equal(teacher[:, -completions.shape[1]:], completions)  # the student's own tokens, appended
    text = tiny_tokenizer.decode(teacher[0, :teacher.shape[1] - completions.shape[1]], skip_special_tokens=False)
    assert "<system> answer with a number <eos>" in text  # earlier messages kept
    assert "two and two is four" in text  # the hint
    assert text.count("<user>") == 1  # one user turn: no role names leaked from templating
    assert torch.equal(rows["sd_mask"], rows["completion_mask"])  # every sample got a context (hints everywhere)
    logged = [entry for entry in trainer.state.log_history if "composer/distill/loss" in entry]
    assert logged and logged[0]["composer/distill/coverage"] == pytest.approx(1.0)


def test_ema_teacher_moves_toward_the_student(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
                                              tmp_path: Path) -> None:
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback())
    initial = {name: value.clone() for name, value in trainer.teacher.weights().items()}
    trainer.train()
    student = dict(trainer.model.named_parameters())
    moved = [name for name, value in trainer.teacher.weights().items() if not torch.equal(value, initial[name])]
    assert moved, "the ema teacher must move after optimizer steps"
    name = moved[0]
    teacher_value = trainer.teacher.weights()[name]
    assert (teacher_value - student[name].detach()).norm() < (initial[name] - student[name].detach()).norm()


def test_empty_self_distillation_mask_is_reported(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
                                                  tmp_path: Path) -> None:
    """No hints, no feedback and (almost surely) no success: no sample gets a teacher context."""
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback(feedback=False), hints=False)
    trainer.reward_funcs[0] = lambda completions, **_: [0.0] * len(completions)  # never a success to imitate
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert any(issubclass(warning.category, EmptyDistillMaskWarning) for warning in caught)
    logged = [entry for entry in trainer.state.log_history if "composer/distill/empty_mask" in entry]
    assert logged and all(entry["composer/distill/empty_mask"] == 1.0 for entry in logged)


def test_preference_pairs_are_mixed_in(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
                                       tmp_path: Path) -> None:
    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": text}],
                                "chosen": [{"role": "assistant", "content": "four"}],
                                "rejected": [{"role": "assistant", "content": "five"}]} for text in PROMPTS])
    config = {"preference": {"weight": 0.5, "beta": 0.1}}
    trainer = make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, config, Feedback(), preference_dataset=pairs)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "composer/preference/loss" in entry]
    assert logged and logged[0]["composer/preference/pairs"] == 2.0
    assert logged[0]["composer/preference/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-4)
    with pytest.raises(ConfigError, match="pass preference_dataset"):
        make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, config, Feedback())
