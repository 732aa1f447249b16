"""The teachers file of `composer-core traces replay`: a YAML/JSON list of teachers, validated up front."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from composer_core.config import describe
from composer_core.errors import ConfigError
from composer_core.replay.teachers import Budget, LocalHFTeacher, OpenAICompatibleTeacher, Teacher


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)


class OpenAITeacherSpec(_Spec):
    """An OpenAI-compatible chat-completions endpoint; prices are USD per million tokens."""

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str
    api_key_env: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    input_usd_per_mtok: float = Field(0.0, ge=0)
    output_usd_per_mtok: float = Field(0.0, ge=0)
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)

    def build(self, budget: Budget) -> Teacher:
        return OpenAICompatibleTeacher(self.name, **self.model_dump(exclude={"name", "kind"}), budget=budget)


class LocalTeacherSpec(_Spec):
    """A local Hugging Face model folder."""

    kind: Literal["local_hf"]
    path: str
    tokenizer_path: str | None = None
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    seed: int = 0

    def build(self, budget: Budget) -> Teacher:
        return LocalHFTeacher(self.name, **self.model_dump(exclude={"name", "kind"}))


TeacherSpec = Annotated[OpenAITeacherSpec | LocalTeacherSpec, Field(discriminator="kind")]
TEACHER_LIST = TypeAdapter(list[TeacherSpec])


def load_teachers(path: str | Path, budget: Budget) -> list[Teacher]:
    """Teachers from a file holding a list (or `{teachers: [...]}`); errors name the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read teachers file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML/JSON: {error}") from None
    if isinstance(data, dict) and "teachers" in data:
        data = data["teachers"]
    if isinstance(data, list):  # kind may be left out: an endpoint is the common case
        data = [{"kind": "openai", **entry} if isinstance(entry, dict) else entry for entry in data]
    try:
        specs = TEACHER_LIST.validate_python(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe(error)}") from None
    return [spec.build(budget) for spec in specs]
