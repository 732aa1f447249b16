"""The teachers file of `composer-core traces replay`: a YAML/JSON list of teachers, validated up front.

The file is read strictly (composer_core.documents: duplicate keys, alias bombs, binary files and FIFOs are
refused) and every number must be finite. An error names the file, the teacher and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from composer_core.config import describe
from composer_core.documents import load_document
from composer_core.errors import ConfigError
from composer_core.replay.local_teacher import LocalHFTeacher
from composer_core.replay.openai_teacher import OpenAICompatibleTeacher
from composer_core.replay.teachers import Budget, Teacher


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)


class OpenAITeacherSpec(_Spec):
    """An OpenAI-compatible chat-completions endpoint; prices are USD per million tokens, waits in seconds."""

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str
    api_key_env: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    input_usd_per_mtok: float = Field(0.0, ge=0)
    output_usd_per_mtok: float = Field(0.0, ge=0)
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_retry_wait_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    deadline_s: float = Field(300.0, gt=0)

    def build(self, budget: Budget) -> Teacher:
        return OpenAICompatibleTeacher(self.name, **self.model_dump(exclude={"name", "kind"}), budget=budget)


class LocalTeacherSpec(_Spec):
    """A local Hugging Face model folder."""

    kind: Literal["local_hf"]
    path: str
    tokenizer_path: str | None = None
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    device: str = "cpu"

    def build(self, budget: Budget) -> Teacher:
        return LocalHFTeacher(self.name, **self.model_dump(exclude={"name", "kind"}))


SPECS: dict[str, type[OpenAITeacherSpec] | type[LocalTeacherSpec]] = {"openai": OpenAITeacherSpec,
                                                                       "local_hf": LocalTeacherSpec}


def load_teachers(path: str | Path, budget: Budget) -> list[Teacher]:
    """Teachers from a file holding a list (or `{teachers: [...]}`); errors name the file, teacher and field."""
    entries = _entries(path)
    specs = [_spec(path, index, entry) for index, entry in enumerate(entries, start=1)]
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"teachers file {path}: teacher names must be unique (they key votes and the cache): "
                          f"{repeated} repeat")
    teachers = []
    for spec in specs:
        try:
            teachers.append(spec.build(budget))
        except ConfigError as error:
            raise ConfigError(f"teachers file {path}: {error}") from None
    return teachers


def _entries(path: str | Path) -> list[Any]:
    """The list of teacher entries in the file."""
    data = load_document(path, "teachers file")
    if isinstance(data, dict) and "teachers" in data:
        if len(data) > 1:
            raise ConfigError(f"teachers file {path}: unknown top-level keys {sorted(set(data) - {'teachers'})}; "
                              "only `teachers` is read")
        data = data["teachers"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"teachers file {path}: expected a non-empty list of teachers (or {{teachers: [...]}}), "
                          f"got {_kind(data)}")
    return data


def _spec(path: str | Path, index: int, entry: Any) -> OpenAITeacherSpec | LocalTeacherSpec:
    """One entry validated; `kind` may be left out (an endpoint is the common case)."""
    name = entry.get("name") if isinstance(entry, dict) else None
    who = f"teacher {name!r} (entry {index})" if isinstance(name, str) else f"entry {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"teachers file {path}: {who}: expected a mapping of settings, got {_kind(entry)}")
    kind = entry.get("kind", "openai")
    if not isinstance(kind, str) or kind not in SPECS:
        raise ConfigError(f"teachers file {path}: {who}: kind {kind!r} is unknown; give one of {sorted(SPECS)}")
    try:
        return SPECS[kind].model_validate(entry)
    except ValidationError as error:
        raise ConfigError(f"teachers file {path}: {who}: {describe(error)}") from None


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"
