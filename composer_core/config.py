"""Pydantic configuration of the three-channel loss, loadable from YAML or JSON.

Every place where the reference implementations disagree is a named field here, with the reference's
value in its description (see docs/objectives.md). Names of objectives, estimators, divergences and
preference losses are checked against the plugin registries when the config is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from composer_core.diloco_settings import DilocoConfig
from composer_core.distill import Divergence, Support, Tail
from composer_core.documents import load_document
from composer_core.errors import ConfigError
from composer_core.finite import non_finite_values
from composer_core.guard.monitor import active_rules
from composer_core.guard.settings import GuardConfig
from composer_core.objectives.advantages import AdvantageEstimator
from composer_core.objectives.aggregation import AggregationMode
from composer_core.objectives.base import Objective, ObjectiveParams
from composer_core.objectives.kl import KLEstimator
from composer_core.overrides import apply_overrides
from composer_core.plugins import Registry, registries
from composer_core.preference import PreferenceLoss
from composer_core.selfteach import RepromptSettings
from composer_core.strict_model import StrictModel

Scope = Literal["global", "local"]


def _finite_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Refuse a free-form settings mapping (params, context) that holds `.inf` or NaN anywhere."""
    found = non_finite_values(settings)
    if found:
        raise ValueError(f"{found[0][0]} is not a finite number; give a finite value")
    return settings


def _known(registry: Registry[Any], name: str) -> str:
    registry.entry(name)  # raises UnknownNameError listing the registered names
    return name


def describe(error: ValidationError) -> str:
    """One line per problem, `where: what`, without pydantic's URLs and type tags."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def _settings(owner: str, registered: Objective | AdvantageEstimator, overrides: Mapping[str, Any]) -> ObjectiveParams:
    """Validate a registered item's params; the error lists the settings it accepts."""
    try:
        return registered.make_params(overrides)
    except ValidationError as error:
        accepted = ", ".join(registered.params.model_fields) or "none"
        raise ConfigError(f"invalid params for {owner}: {describe(error)} (accepted: {accepted})") from None


def reprompt_settings(context: Mapping[str, Any]) -> RepromptSettings:
    """`distill.context` validated against the settings model of the teacher-context builder that every backend
    uses; the error names the key and lists the accepted ones."""
    try:
        return RepromptSettings.model_validate(dict(context))
    except ValidationError as error:
        raise ValueError(f"{describe(error)} (accepted: {', '.join(RepromptSettings.model_fields)})") from None


def _fill_settings(section: dict[str, Any], key: str, settings: BaseModel, where: str, owner: str,
                   notes: list[str]) -> None:
    """Replace the given settings `section[key]` by all of `settings`, noting the keys that came from defaults."""
    complete = settings.model_dump(mode="json")
    defaulted = [name for name in complete if name not in section[key]]
    section[key] = complete
    if defaulted:
        notes.append(f"{where}.{key}: {', '.join(defaulted)} from the defaults of {owner}")


@dataclass(frozen=True)
class ResolvedObjective:
    """An objective with its validated settings and the aggregation that applies."""

    objective: Objective
    params: ObjectiveParams
    aggregation: AggregationMode
    normaliser: Scope


class ObjectiveConfig(StrictModel):
    name: str = Field("dr_grpo", description="registered objective; Composer's own base is Dr.GRPO-like")
    aggregation: AggregationMode | None = Field(None, description="None: the objective's default")
    normaliser: Scope | None = Field(None, description="global: the caller's global counts; local: this batch")
    params: dict[str, Any] = Field(default_factory=dict, description="the objective's own settings")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        return _known(registries().objectives, name)

    _finite_params = field_validator("params")(_finite_settings)

    @model_validator(mode="after")
    def _params_valid(self) -> ObjectiveConfig:
        self.resolve()
        return self

    def resolve(self) -> ResolvedObjective:
        objective: Objective = registries().objectives.get(self.name)
        params = _settings(f"objective {self.name!r}", objective, self.params)
        return ResolvedObjective(objective, params, self.aggregation or objective.aggregation,
                                 self.normaliser or objective.normaliser)


class AdvantageConfig(StrictModel):
    name: str | None = Field(None, description="None: the estimator the objective is paired with")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        return None if name is None else _known(registries().advantage_estimators, name)

    _finite_params = field_validator("params")(_finite_settings)

    def resolve(self, objective: str) -> tuple[AdvantageEstimator, ObjectiveParams]:
        name = self.name or registries().objectives.get(objective).advantage
        estimator: AdvantageEstimator = registries().advantage_estimators.get(name)
        return estimator, _settings(f"advantage estimator {name!r}", estimator, self.params)


class KLConfig(StrictModel):
    coef: float = Field(0.0, ge=0.0, description="beta; 0 turns the KL term off (TRL and verl default)")
    estimator: KLEstimator = Field("k3", description="k3 in the loss (TRL, verl kl_loss_type=low_var_kl); "
                                                     "Composer 2 reportedly uses k1")
    placement: Literal["loss", "reward"] = Field("loss", description="loss: beta*KL added per token (TRL "
                                                 "beta, verl use_kl_loss); reward: verl use_kl_in_reward")
    straight_through: bool = Field(False, description="value of the estimator, gradient of k2 (verl 'k3+')")
    clamp: float | None = Field(None, gt=0, description="clamp of the estimate; verl k3: 10, TRL: none")
    log_ratio_clamp: float | None = Field(None, gt=0, description="clamp of log ref - log pi in k3; verl 20")
    importance_weighted: bool = Field(False, description="loss placement: multiply KL_t by the token ratio "
                                      "pi/pi_old, with its gradient (TRL use_bias_correction_kl, default on)")


class PolicyConfig(StrictModel):
    weight: float = Field(1.0, ge=0.0)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    kl: KLConfig = Field(default_factory=KLConfig)
    allow_empty_rows: bool = Field(False, description="accept rows with no response token (padding rows)")

    @model_validator(mode="after")
    def _advantage_resolves(self) -> PolicyConfig:
        self.advantage.resolve(self.objective.name)
        return self


class DistillConfig(StrictModel):
    weight: float = Field(0.0, ge=0.0, description="0 turns self-distillation off")
    divergence: str = "generalized_jsd"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="0 forward KL, 1 reverse KL; SDPO YAML 0.5")
    support: Support = Field("student_topk", description="SDPO: student top-K; OPSD: teacher top-K")
    top_k: int = Field(100, ge=1, description="SDPO 100 (20 in rich-feedback runs)")
    tail: Tail = Field("bucket", description="bucket: SDPO's tail bucket; renormalise: TRL default, OPSD; none: "
                                             "truncated sum over the K entries (VeRL's top-K distillation)")
    temperature: float = Field(1.0, gt=0.0, description="the rollout sampling temperature")
    is_clip: float | None = Field(2.0, gt=0.0, description="cap of the stopped IS weight; None: no correction")
    pointwise_clip: float | None = Field(None, gt=0.0, description="OPSD clips each term at 0.05")
    aggregation: AggregationMode = "token-mean"
    normaliser: Scope = Field("global", description="SDPO reference: local micro-batch count")
    teacher: Literal["ema", "frozen", "trust-region", "live"] = Field(
        "ema", description="teacher weights: SDPO ema; OPSD frozen; live diverges in the SDPO paper")
    teacher_rate: float = Field(0.05, gt=0.0, le=1.0, description="ema / trust-region rate r (SDPO 0.05)")
    context: dict[str, Any] = Field(default_factory=dict,
                                    description="teacher-context settings (selfteach.RepromptSettings: success "
                                                "threshold, templates, truncation; docs/backends/trl.md)")

    @field_validator("divergence")
    @classmethod
    def _registered(cls, name: str) -> str:
        return _known(registries().divergences, name)

    @field_validator("context")
    @classmethod
    def _context_valid(cls, context: dict[str, Any]) -> dict[str, Any]:
        """Checked here, against the settings model every backend's teacher-context builder uses, so that a
        typo fails `composer-core config`, not a training job an hour later."""
        _finite_settings(context)
        reprompt_settings(context)
        return context

    def reprompt(self) -> RepromptSettings:
        """The validated teacher-context settings."""
        return reprompt_settings(self.context)

    @model_validator(mode="after")
    def _sampled_token_is_reverse_kl(self) -> DistillConfig:
        if self.support == "sampled_token" and self.alpha != 1.0:
            raise ValueError(f"support 'sampled_token' estimates reverse KL only: set alpha to 1.0 (got "
                             f"{self.alpha})")
        return self

    def resolve_divergence(self) -> Divergence:
        return registries().divergences.get(self.divergence)


class PreferenceConfig(StrictModel):
    """Trace-replay DPO: composer-core's own research channel, not part of Cursor's Composer recipe."""

    weight: float = Field(0.0, ge=0.0, description="0 turns the channel off")
    loss: str = "sigmoid"
    beta: float = Field(0.1, ge=0.0, description="0 turns the channel off")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)

    @field_validator("loss")
    @classmethod
    def _registered(cls, name: str) -> str:
        return _known(registries().preference_losses, name)

    def resolve_loss(self) -> PreferenceLoss:
        return registries().preference_losses.get(self.loss)


class LoraConfig(StrictModel):
    """LoRA adapters through peft: only the adapters train; the self-distillation teacher shares the base."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (lora_alpha)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="module names, or every "
                                                               "linear layer but the output head")


class ModelConfig(StrictModel):
    path: str | None = Field(None, description="a saved model folder, a GGUF file (or a folder holding one), or a "
                                               "hub model id; None: the backend's embedded default")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters instead of every weight")


TargetsMode = Literal["on_policy", "off_policy"]


class DataConfig(StrictModel):
    """What to train on: the built-in task, a user's data set, agent-trace targets, preference pairs.

    With neither `train` nor `targets` the built-in `task` is trained (the embedded default job).
    """

    task: Literal["arithmetic"] | None = Field(None, description="the built-in task with a verifiable reward; used "
                                                                 "when neither train nor targets is given")
    train: str | None = Field(None, description="a JSONL/JSON/Parquet/CSV file, a saved `datasets` folder or a hub "
                                                "data set name")
    eval: str | None = Field(None, description="held-out prompts, same forms as train; None: no file eval")
    train_split: str = Field("train", description="the split of a DatasetDict folder or hub data set")
    eval_split: str = Field("test", description="the split of `eval` when it is a DatasetDict or hub data set")
    prompt_column: str = Field("prompt", description="a string or a list of chat messages per row")
    reward_columns: list[str] | None = Field(None, description="columns passed to the reward functions as keyword "
                                                               "arguments; None: every column but the prompt (TRL)")
    train_size: int = Field(512, ge=1, description="rows of the built-in task")
    eval_size: int = Field(64, ge=1, description="held-out rows evaluated (the built-in task's, or the first of eval)")
    hints: bool = Field(True, description="give the self-distillation teacher the task's hint")
    preference_pairs: str | None = Field(None, description="JSONL of preference pairs for channel 3")
    targets: str | None = Field(None, description="TARGETS.jsonl from `composer-core traces targets`: channel 2 "
                                                  "on agent traces' error turns (Composer's targeted hints)")
    targets_mode: TargetsMode = Field("on_policy", description="on_policy: the student writes its own turn and the "
                                      "hinted model teaches it (SDPO); off_policy: distil on the trace's own message")

    @model_validator(mode="after")
    def _one_source_of_prompts(self) -> DataConfig:
        if self.task is not None and self.train is not None:
            raise ValueError(f"data.task={self.task!r} and data.train={self.train!r} both give the prompts: keep one")
        if self.builtin_task is not None and (self.eval is not None or self.prompt_column != "prompt"):
            unused = "data.eval" if self.eval is not None else "data.prompt_column"
            raise ValueError(f"{unused} describes a user's data set, but the prompts come from the built-in task "
                             f"{self.builtin_task!r}: set data.train (and reward) too, or leave {unused} out")
        return self

    @model_validator(mode="after")
    def _off_policy_targets_have_prompts(self) -> DataConfig:
        if self.targets is not None and self.targets_mode == "off_policy" and self.train is None and self.task is None:
            raise ValueError("data.targets_mode=off_policy adds a distillation term to RL steps, but no RL prompts "
                             "are given: set data.train (or data.task=arithmetic), or use targets_mode=on_policy")
        return self

    @property
    def builtin_task(self) -> str | None:
        """The built-in task this config trains: `task`, or the embedded default when nothing else is given."""
        if self.task is not None:
            return self.task
        return "arithmetic" if self.train is None and self.targets is None else None


class RewardFunctionConfig(StrictModel):
    """A reward function: `package.module:function` (importable: installed or on PYTHONPATH) or
    `path/to/file.py:function` (relative to the current directory, VeRL's custom_reward_function habit). It is called
    as TRL calls reward functions (prompts, completions, the data's reward columns as keyword arguments) and returns
    one float, or an object with `.reward` and `.feedback`, per completion (composer_core.rewards)."""

    function: str
    weight: float = Field(1.0, description="its weight in the summed reward")
    name: str | None = Field(None, pattern=r"^[\w.-]+$", description="the name its metrics are logged under "
                             "(letters, digits, _ . -); None: the function's own name")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments the function is called with "
                                   "(VeRL: custom_reward_function.reward_kwargs), e.g. a sandbox's settings")

    @field_validator("params")
    @classmethod
    def _params_finite(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _finite_settings(params)

    @field_validator("function")
    @classmethod
    def _reference(cls, reference: str) -> str:
        cls.split(reference)
        return reference

    @staticmethod
    def split(reference: str) -> tuple[str, str]:
        """(module or file, function name) of a reference; a malformed one is a ConfigError (a ValueError)."""
        location, _, name = reference.rpartition(":")
        if not location or not name.isidentifier():
            raise ConfigError(f"reward {reference!r} is not 'package.module:function' or 'path/to/file.py:function'")
        return location, name

    @staticmethod
    def names_a_file(location: str) -> bool:
        """A `.py` name or anything with a path separator is a file; anything else an importable module."""
        return location.endswith(".py") or "/" in location or "\\" in location


class RunConfig(StrictModel):
    """Backend-neutral run settings; each backend maps them onto its own configuration."""

    output_dir: str = "runs/composer"
    max_steps: int = Field(40, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    prompts_per_step: int = Field(8, ge=1)
    num_generations: int = Field(4, ge=2, description="samples per prompt (the GRPO group size)")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_prompt_length: int | None = Field(None, ge=1, description="None: the backend's default")
    max_completion_length: int = Field(16, ge=1)
    seed: int = 0
    save_steps: int = Field(20, ge=1)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="evaluate on the held-out prompts every N steps")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    report_to: list[str] = Field(default_factory=list, description="the backend's own integrations: tensorboard, "
                                                                   "wandb, trackio, ...; metrics.jsonl always")
    trl: dict[str, Any] = Field(default_factory=dict, description="further GRPOConfig arguments for the trl backend "
                                                                  "(those the sections above set are refused here)")


class ComposerConfig(StrictModel):
    """One experiment: the composed loss (channel 1 policy, 2 self-distillation, 3 trace-replay DPO), the
    model, the data and the run; `--backend` says where it runs."""

    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    reward: list[RewardFunctionConfig] = Field(default_factory=list, description="reward functions; empty: the "
                                               "built-in task's own")
    run: RunConfig = Field(default_factory=RunConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig, description="the training guard (kill-switch); on by "
                               "default, see docs/guard.md")
    diloco: DilocoConfig = Field(default_factory=DilocoConfig, description="the DiLoCo outer loop of the diloco "
                                 "backend (replicas on several clusters); ignored by the other backends")

    @field_validator("reward", mode="before")
    @classmethod
    def _reward_shorthand(cls, value: Any) -> Any:
        """`reward: pkg.mod:fn` and `reward: [a:f, {function: b:g, weight: 0.5}]` as well as the full form."""
        items = [value] if isinstance(value, str | Mapping) else value
        return [{"function": item} if isinstance(item, str) else item for item in items] \
            if isinstance(items, list) else value

    @model_validator(mode="after")
    def _guard_rules_registered(self) -> ComposerConfig:
        active_rules(self.guard)  # a misspelt rule or threshold fails as the config loads, not as training starts
        return self

    @model_validator(mode="after")
    def _reward_for_the_data(self) -> ComposerConfig:
        if self.data.train is not None and not self.reward:
            raise ValueError("data.train is set but no reward function is: add `reward: [package.module:function]` "
                             "(or path/to/file.py:function)")
        if self.run.eval_steps is not None and self.data.builtin_task is None and self.data.eval is None:
            raise ValueError(f"run.eval_steps={self.run.eval_steps} evaluates on held-out prompts, but data.eval is "
                             "not set: add data.eval (same forms as data.train), or remove run.eval_steps")
        return self

    @model_validator(mode="after")
    def _targets_train_channel_two(self) -> ComposerConfig:
        data = self.data
        if data.targets is None:
            return self
        if self.distill.weight == 0:
            raise ValueError("data.targets trains the self-distillation channel, which is off: set distill.weight "
                             "> 0 (0.5 in the default job)")
        if data.train is None and data.task is None and self.reward:
            raise ValueError("reward functions are set but data.targets alone has no rows they score (target rows "
                             "have no verifiable reward): add data.train or data.task, or leave reward out")
        return self

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> ComposerConfig:
        """Load from a .json file (strict JSON) or any other file as YAML, strictly (composer_core.documents:
        duplicate keys, alias bombs, binary files and FIFOs are refused), with dotted `key=value` overrides;
        errors name the file and the field. An empty file means every library default."""
        data = load_document(path, "config file")
        return cls.from_mapping({} if data is None else data, source=str(path), overrides=overrides)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "config", overrides: Sequence[str] = ()) -> ComposerConfig:
        """Validate a mapping of settings, after applying dotted `key=value` overrides (composer_core.overrides)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be a mapping of settings, got {type(data).__name__}")
        if overrides:
            data, source = apply_overrides(data, overrides), f"{source} with {' '.join(overrides)}"
        try:
            return cls.model_validate(dict(data))
        except ValidationError as error:
            raise ConfigError(f"{source} is invalid: {describe(error)}") from None

    def resolved(self) -> tuple[dict[str, Any], list[str]]:
        """The config as plain data with the defaults that are otherwise resolved later written out (objective
        aggregation, normaliser and params, the advantage estimator and its params, the teacher-context
        settings), and one note per section so filled. Loading the data again gives the same resolved config."""
        data = self.model_dump(mode="json")
        notes: list[str] = []
        objective = self.policy.objective.resolve()
        owner = f"objective {objective.objective.name!r}"
        section = data["policy"]["objective"]
        for key, value in (("aggregation", objective.aggregation), ("normaliser", objective.normaliser)):
            if section[key] is None:
                section[key] = value
                notes.append(f"policy.objective.{key}: {value!r}, the default of {owner}")
        _fill_settings(section, "params", objective.params, "policy.objective", owner, notes)
        estimator, estimator_params = self.policy.advantage.resolve(objective.objective.name)
        advantage = data["policy"]["advantage"]
        if advantage["name"] is None:
            advantage["name"] = estimator.name
            notes.append(f"policy.advantage.name: {estimator.name!r}, the estimator {owner} is paired with")
        _fill_settings(advantage, "params", estimator_params, "policy.advantage", f"estimator {estimator.name!r}",
                       notes)
        _fill_settings(data["distill"], "context", self.distill.reprompt(), "distill",
                       "the teacher-context builder", notes)
        return data, notes


# The job `composer-core train` runs without --config (and `composer-core config` shows without a file):
# Composer's Dr.GRPO-like objective plus self-distillation from the task's feedback and hints (full-vocabulary
# JSD: the embedded model's vocabulary is small). The library default, ComposerConfig(), has every composer
# channel off (plain Dr.GRPO), so that adding composer-core to an existing job changes nothing unasked.
DEFAULT_JOB: dict[str, Any] = {
    "policy": {"objective": {"name": "dr_grpo"}},
    "distill": {"weight": 0.5, "support": "full", "alpha": 0.5},
}
