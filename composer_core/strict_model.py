"""The pydantic base of every settings section: unknown keys and non-finite numbers are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt setting must never be silently ignored; `.inf` and NaN are refused
    (YAML reads `.inf` and `.nan` as floats, and a non-finite rate or weight poisons every step)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
