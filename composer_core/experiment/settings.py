"""What one evidence ladder runs: the arms, seeds, model, task files, replay teachers and the base job config.

Two presets: the embedded model (every arm, 5 seeds, the default job's loss settings) and a pretrained model
given by `--model` (A1 and A2, 2 seeds, a prompt that asks for the number alone, a longer completion budget and
student top-K distillation for a 49k vocabulary). `--quick` shrinks either to a few minutes. Everything is
written to the output folder, so a resumed ladder can refuse to mix runs made under other settings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from composer_core.strict_model import StrictModel

Arm = Literal["A1", "A2", "A3", "A4"]
ARMS: tuple[Arm, ...] = ("A1", "A2", "A3", "A4")
PromptStyle = Literal["plain", "number_only"]

EMBEDDED_BASE: dict[str, Any] = {
    "policy": {"objective": {"name": "dr_grpo"}},
    "distill": {"support": "full", "alpha": 0.5},  # the default job's: the embedded vocabulary is small
    "run": {"max_steps": 40, "prompts_per_step": 8, "num_generations": 4, "max_completion_length": 16,
            "save_steps": 40},
}
# SmolLM2-135M-Instruct-sized models: 49k vocabulary (student top-K), answers of a few tokens when asked for the
# number alone, sampling at 0.5 (SmolLM2-135M-Instruct: 23% right greedy, 13% of samples at 0.5, 9% at 0.7, 4% at
# 1.0, where too few groups hold a right answer for GRPO to learn from).
PRETRAINED_BASE: dict[str, Any] = {
    "policy": {"objective": {"name": "dr_grpo"}},
    "distill": {"support": "student_topk", "top_k": 20, "temperature": 0.5},  # also the rollouts' temperature
    "run": {"max_steps": 20, "prompts_per_step": 4, "num_generations": 4, "max_completion_length": 32,
            "learning_rate": 3e-5, "save_steps": 20},
}


class LadderSettings(StrictModel):
    """One ladder: which arms and seeds, on which model and backend, with which task files and pairs."""

    arms: list[Arm] = Field(default_factory=lambda: list(ARMS), min_length=1)
    seeds: int = Field(5, ge=1)
    backend: str = "trl"
    model: str | None = Field(None, description="model.path of every arm; None: the backend's embedded model")
    prompt_style: PromptStyle = "plain"
    train_size: int = Field(256, ge=1, description="training prompts (shared by every arm and seed)")
    eval_size: int = Field(128, ge=1, description="held-out prompts (the same for every arm and seed)")
    distill_weight: float = Field(0.5, gt=0.0, description="distill.weight in A2 and A4")
    preference_weight: float = Field(0.5, gt=0.0, description="preference.weight in A3 and A4")
    replay_prompts: int = Field(128, ge=1, description="training prompts replayed for A3's pairs")
    teachers: int = Field(5, ge=2, description="local replay teachers: samples of the base model, one seed each")
    teacher_temperature: float = Field(1.0, gt=0.0)
    teacher_max_new_tokens: int = Field(16, ge=1)
    base: dict[str, Any] = Field(default_factory=dict, description="the job config every arm starts from")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides applied to every arm")

    @property
    def needs_pairs(self) -> bool:
        return any(arm in ("A3", "A4") for arm in self.arms)


def preset(model: str | None, *, quick: bool) -> LadderSettings:
    """The settings for the embedded model (model None) or a pretrained one, full or `quick`."""
    if model is None:
        settings = LadderSettings(base=EMBEDDED_BASE)
    else:
        settings = LadderSettings(model=model, arms=["A1", "A2"], seeds=2, prompt_style="number_only",
                                  eval_size=64, teacher_max_new_tokens=32, base=PRETRAINED_BASE)
    return shrunk(settings) if quick else settings


def shrunk(settings: LadderSettings) -> LadderSettings:
    """A few minutes' version of `settings`: one seed, four steps, small task files, a small replay."""
    base = {**settings.base, "run": {**settings.base.get("run", {}), "max_steps": 4, "prompts_per_step": 4,
                                     "save_steps": 4}}
    return settings.model_copy(update={"seeds": 1, "train_size": 32, "eval_size": 16,
                                       "replay_prompts": 16, "teachers": 3, "base": base})
