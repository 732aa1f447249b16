"""run.max_prompt_length on TRL 1.16, whose GRPOConfig has no prompt limit: prompts longer than the limit keep their
last tokens (left truncation, the side TRL truncated on before 1.0 and verl's `truncation: left`), so the chat
template's generation prompt survives. How many were cut is logged, never silent."""

from __future__ import annotations

from typing import Any

from composer_core.errors import ConfigError

TRUNCATED_METRIC = "composer/prompts/truncated_fraction"


def truncate_prompt_ids(prompt_ids: list[list[int]], limit: int, multimodal_fields: dict[str, Any]
                        ) -> tuple[list[list[int]], float]:
    """The prompts cut to their last `limit` tokens, and the fraction that was cut. Prompts with images are refused
    when they would be cut: their image tokens would no longer match the image fields."""
    cut = [len(ids) > limit for ids in prompt_ids]
    if any(cut) and multimodal_fields:
        longest = max(len(ids) for ids in prompt_ids)
        raise ConfigError(f"run.max_prompt_length={limit} would cut a prompt with images ({longest} tokens), which "
                          "leaves its image tokens without their images; raise run.max_prompt_length or unset it")
    truncated = [list(ids[-limit:]) if too_long else ids for ids, too_long in zip(prompt_ids, cut, strict=True)]
    return truncated, sum(cut) / len(cut) if cut else 0.0
