"""Resuming through TRL's own `resume_from_checkpoint` restores what TRL does not know about: the
self-distillation teacher's weights and where the preference pairs' cycle stands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch
from datasets import Dataset
from test_trl_channels import PROMPTS, SD, Feedback, make_trainer
from transformers import PreTrainedTokenizerBase

from composer_core import ConfigError
from composer_trl.preference_mixer import PreferenceMixer
from composer_trl.trainer import COMPOSER_STATE


def teacher_tensors(trainer: Any) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in trainer.teacher.weights().items()}


def saving_every_step(trainer: Any) -> Any:
    trainer.args.save_strategy, trainer.args.save_steps, trainer.args.max_steps = "steps", 1, 1
    return trainer


def test_resume_restores_the_ema_teacher(tiny_model_dir: Path, tiny_tokenizer: PreTrainedTokenizerBase,
                                        tmp_path: Path) -> None:
    first = saving_every_step(make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback()))
    initial = teacher_tensors(first)
    first.train()
    trained = teacher_tensors(first)
    assert any(not torch.equal(initial[name], trained[name]) for name in trained)  # the EMA moved
    checkpoint = tmp_path / "checkpoint-1"
    assert (checkpoint / COMPOSER_STATE).is_file()

    second = saving_every_step(make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback()))
    second.train(resume_from_checkpoint=str(checkpoint))  # at max_steps already: restores, trains nothing
    for name, tensor in teacher_tensors(second).items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0, msg=name)


def test_a_checkpoint_without_the_composer_state_is_refused(tiny_model_dir: Path,
                                                            tiny_tokenizer: PreTrainedTokenizerBase,
                                                            tmp_path: Path) -> None:
    first = saving_every_step(make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback()))
    first.train()
    (tmp_path / "checkpoint-1" / COMPOSER_STATE).unlink()
    second = saving_every_step(make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, SD, Feedback()))
    with pytest.raises(ConfigError, match=f"has no {COMPOSER_STATE}"):
        second.train(resume_from_checkpoint=True)


def test_the_preference_cycle_continues_where_it_stood(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{text} {index}"}],
                                "chosen": [{"role": "assistant", "content": "four"}],
                                "rejected": [{"role": "assistant", "content": "five"}]}
                               for index in range(3) for text in PROMPTS])

    def stream(mixer: PreferenceMixer, batches: int) -> list[int]:
        return [index for _ in range(batches) for index in mixer.next_batch().indices]

    original = PreferenceMixer(pairs, tiny_tokenizer, batch_size=4, seed=1)
    stream(original, 2)
    state = original.state_dict()
    expected = stream(original, 3)
    resumed = PreferenceMixer(pairs, tiny_tokenizer, batch_size=4, seed=1)
    resumed.load_state_dict(state)
    assert stream(resumed, 3) == expected
    fresh = PreferenceMixer(pairs, tiny_tokenizer, batch_size=4, seed=1)
    assert stream(fresh, 3) != expected  # without the state the cycle starts again
    with pytest.raises(ConfigError, match="same data.preference_pairs"):
        PreferenceMixer(pairs.select(range(5)), tiny_tokenizer, batch_size=4).load_state_dict(state)
