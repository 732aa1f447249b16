"""Which weights produce the self-distillation teacher's logits (ALGORITHMS.md 2.3).

- `ema`: teacher <- (1 - r) teacher + r student once per optimizer step (`after_step`), r = 0.05 (SDPO
  default). A full model gets a frozen copy; a PEFT model gets a second adapter (`composer_teacher`),
  initialised from the student adapter and averaged in place, so no second copy of the base model exists.
  The adapter EMA averages lora_A and lora_B separately, so the teacher's delta is not the EMA of the student's
  deltas (as in TRL and sdpo-rl).
- `frozen`: the initial weights: a copy taken at construction, or for a PEFT model the base with adapters
  disabled (the initial weights when the adapter starts as a no-op, as standard LoRA init does).
- `trust-region`: teacher logits `(1 - r) z_ref + r z_student`, both on the teacher context, z_ref from the
  frozen weights.
- `live`: the current student, no copy (the SDPO paper reports that it diverges).

The trainer passes a `forward(model) -> logits` callable (for example `TeacherBatch.completion_logits`); the
teacher runs it on the right weights under torch.no_grad, with every module in eval mode (no dropout) and its
modes restored afterwards. Pass the unwrapped model (not a DDP/accelerate wrapper). EMA arithmetic happens in
the parameters' dtype: a bfloat16 teacher cannot resolve r-sized updates of nearly equal weights.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from composer_core.errors import ConfigError

Strategy = Literal["ema", "frozen", "trust-region", "live"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
Forward = Callable[[nn.Module], torch.Tensor]
TEACHER_ADAPTER = "composer_teacher"
DEFAULT_RATE = 0.05


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def parameter_count(parameters: Iterator[nn.Parameter] | list[torch.Tensor]) -> int:
    return sum(parameter.numel() for parameter in parameters)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode; each module's own mode restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def adapter_active(model: nn.Module, name: str) -> Iterator[None]:
    """A PEFT model with adapter `name` active; the previous adapter and every requires_grad flag restored."""
    previous = model.active_adapter
    flags = {key: parameter.requires_grad for key, parameter in model.named_parameters()}
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)
        for key, parameter in model.named_parameters():
            parameter.requires_grad_(flags[key])


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with no gradients, in eval mode."""
    duplicate = copy.deepcopy(model)
    duplicate.requires_grad_(False)
    return duplicate.eval()


class TeacherWeights(ABC):
    """Teacher weight strategy. Build with `TeacherWeights.from_config`."""

    strategy: ClassVar[Strategy]

    @staticmethod
    def from_config(strategy: Strategy, model: nn.Module, rate: float = DEFAULT_RATE,
                    reference: nn.Module | None = None) -> TeacherWeights:
        """The teacher for `model` (the unwrapped student, PEFT or not) with update/mixing rate r in (0, 1].

        `reference` optionally supplies the initial weights for frozen and trust-region (for example the
        trainer's existing reference model), saving a copy; it is not checkpointed here. The rate is checked
        for every strategy but used only by ema and trust-region.
        """
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown teacher strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
            raise ConfigError(f"teacher rate must be a number in (0, 1] (SDPO default 0.05), got {rate!r}")
        if strategy == "live":
            return LiveTeacher()
        if strategy == "ema":
            return AdapterEmaTeacher(model, rate) if is_peft_model(model) else EmaTeacher(model, rate)
        frozen = FrozenTeacher.for_model(model, reference)
        return frozen if strategy == "frozen" else TrustRegionTeacher(frozen, rate)

    def teacher_logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        """`forward(model)` on the teacher weights, without gradients."""
        with torch.no_grad():
            return self.logits(student_model, forward).detach()

    @abstractmethod
    def logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        """The teacher's logits; called under torch.no_grad."""

    def after_step(self, student_model: nn.Module) -> None:  # noqa: B027 (a no-op hook; only ema overrides it)
        """Call once per optimizer step, after the step; only ema moves."""

    @property
    def held_parameters(self) -> int:
        """Parameter elements this teacher holds in addition to the student (0: it shares the student's)."""
        return 0

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold to restore this teacher."""
        return {}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if weights:
            raise ConfigError(f"the {self.strategy} teacher holds no weights, but the checkpoint has {len(weights)}")

    def state_dict(self) -> dict[str, Any]:
        """`{"strategy": name, "weights": {name: tensor}}`; tensors are references, as in nn.Module.state_dict."""
        return {"strategy": self.strategy, "weights": self.weights()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.strategy:
            raise ConfigError(f"checkpoint holds a {state.get('strategy')!r} teacher, this run uses {self.strategy!r}")
        self.load_weights(state["weights"])


def load_into(target: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> None:
    """Copy checkpoint tensors into the named tensors, requiring the same names."""
    if set(target) != set(weights):
        missing, unexpected = sorted(set(target) - set(weights)), sorted(set(weights) - set(target))
        raise ConfigError(f"teacher checkpoint does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(weights[name])


def lerp_toward(pairs: list[tuple[torch.Tensor, torch.Tensor]], rate: float) -> None:
    """teacher <- teacher + rate (source - teacher) for every (teacher, source) pair, in the teacher's dtype, as one
    foreach call rather than a kernel per parameter."""
    if not pairs:
        return
    with torch.no_grad():
        torch._foreach_lerp_([teacher for teacher, _ in pairs],
                             [source.to(teacher.dtype) for teacher, source in pairs], rate)


class LiveTeacher(TeacherWeights):
    strategy = "live"

    def logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        with eval_mode(student_model):
            return forward(student_model)


class FrozenTeacher(TeacherWeights):
    """The initial weights: `module` (owned: a copy taken here), or for a PEFT student with module None, the
    student's base with adapters disabled."""

    strategy = "frozen"

    def __init__(self, module: nn.Module | None, owned: bool) -> None:
        self.module = module
        self.owned = owned

    @classmethod
    def for_model(cls, model: nn.Module, reference: nn.Module | None) -> FrozenTeacher:
        if reference is not None:
            return cls(reference, owned=False)
        return cls(None, owned=False) if is_peft_model(model) else cls(frozen_copy(model), owned=True)

    def logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        if self.module is not None:
            with eval_mode(self.module):
                return forward(self.module)
        with student_model.disable_adapter(), eval_mode(student_model):
            return forward(student_model)

    @property
    def held_parameters(self) -> int:
        return parameter_count(self.module.parameters()) if self.owned else 0

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict() if self.owned else {}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if self.owned:
            self.module.load_state_dict(weights)
        else:
            super().load_weights(weights)


class EmaTeacher(TeacherWeights):
    """A frozen full copy of the student, moved toward it by `after_step`."""

    strategy = "ema"

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.module = frozen_copy(model)
        self.rate = rate

    def logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        return forward(self.module)

    def after_step(self, student_model: nn.Module) -> None:
        """teacher <- (1 - r) teacher + r student, every parameter in one fused update."""
        student = dict(student_model.named_parameters())
        pairs = []
        for name, teacher in self.module.named_parameters():
            if name not in student:
                raise ConfigError(f"student has no parameter {name!r}; pass the unwrapped model to after_step")
            pairs.append((teacher, student[name]))
        lerp_toward(pairs, self.rate)

    @property
    def held_parameters(self) -> int:
        return parameter_count(self.module.parameters())

    def weights(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(weights)


class AdapterEmaTeacher(TeacherWeights):
    """A second adapter `composer_teacher` on a PEFT student: initialised from the student adapter, averaged
    in place toward it by `after_step`, active only during teacher forwards."""

    strategy = "ema"

    def __init__(self, model: nn.Module, rate: float, name: str = TEACHER_ADAPTER) -> None:
        student = model.active_adapter
        if not isinstance(student, str) or student == name:
            raise ConfigError(f"the EMA adapter teacher needs one active student adapter other than {name!r}, got "
                              f"{student!r}")
        shared = [key for key, parameter in model.named_parameters()
                  if parameter.requires_grad and f".{student}." not in key]
        if shared:
            raise ConfigError(f"trainable parameters outside the adapter {student!r} would be shared by teacher and "
                              f"student (for example {shared[:3]}); train the adapter only, or use a full model")
        self.student, self.name, self.rate = student, name, rate
        if name not in model.peft_config:
            model.add_adapter(name, model.peft_config[student])
        with torch.no_grad():
            for teacher, source in self.pairs(model):
                teacher.requires_grad_(False)
                teacher.copy_(source)
        self.tensors = dict(self.named_teacher(model))

    def named_teacher(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        return [(key, parameter) for key, parameter in model.named_parameters() if f".{self.name}." in key]

    def pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(teacher adapter parameter, student adapter parameter) pairs, matched by name."""
        parameters = dict(model.named_parameters())
        pairs = []
        for key, source in parameters.items():
            if f".{self.student}." in key:
                counterpart = key.replace(f".{self.student}.", f".{self.name}.")
                if counterpart not in parameters:
                    raise ConfigError(f"adapter {self.name!r} has no parameter {counterpart!r}; pass the unwrapped "
                                      "PEFT model")
                pairs.append((parameters[counterpart], source))
        return pairs

    def logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        with adapter_active(student_model, self.name), eval_mode(student_model):
            return forward(student_model)

    def after_step(self, student_model: nn.Module) -> None:
        """teacher adapter <- (1 - r) teacher adapter + r student adapter, every parameter in one fused update."""
        lerp_toward(self.pairs(student_model), self.rate)

    @property
    def held_parameters(self) -> int:
        return parameter_count(list(self.tensors.values()))

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        load_into(self.tensors, weights)


class TrustRegionTeacher(TeacherWeights):
    """Logits `(1 - r) z_ref + r z_student` on the teacher context; z_ref from a frozen teacher."""

    strategy = "trust-region"

    def __init__(self, reference: FrozenTeacher, rate: float) -> None:
        self.reference = reference
        self.rate = rate

    def logits(self, student_model: nn.Module, forward: Forward) -> torch.Tensor:
        mixed = self.reference.logits(student_model, forward).mul(1.0 - self.rate)
        return mixed.add_(LiveTeacher().logits(student_model, forward), alpha=self.rate)

    @property
    def held_parameters(self) -> int:
        return self.reference.held_parameters

    def weights(self) -> dict[str, torch.Tensor]:
        return self.reference.weights()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.reference.load_weights(weights)
