"""Strict YAML/JSON documents: duplicate keys, alias bombs, self-reference and binary files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer_core.documents import MAX_NODES, load_document, parse_document
from composer_core.errors import ConfigError


def alias_bomb(levels: int = 9) -> str:
    """The billion-laughs shape: each level repeats the one before nine times."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_is_expanded() -> None:
    with pytest.raises(ConfigError, match="alias bomb"):
        parse_document(alias_bomb(), json_format=False, source="job.yaml")


def test_shared_aliases_below_the_bound_still_load() -> None:
    text = "base: &base {lr: 0.1, steps: 3}\nrun: *base\neval: *base\n"
    assert parse_document(text, json_format=False, source="job.yaml") == {
        "base": {"lr": 0.1, "steps": 3}, "run": {"lr": 0.1, "steps": 3}, "eval": {"lr": 0.1, "steps": 3}}


def test_expanded_size_is_counted_not_the_text_size() -> None:
    small = alias_bomb(levels=5)  # 9**5 = 59049 leaves: under the bound
    assert MAX_NODES > 9 ** 5
    assert len(parse_document(small, json_format=False, source="x")) == 5


@pytest.mark.parametrize(("text", "json_format", "where"), [
    ("run:\n  max_steps: 5\n  max_steps: 500\n", False, "'max_steps' at line 3 \\(first at line 2\\)"),
    ("run: {seed: 1, seed: 2}\n", False, "'seed'"),
    ('{"run": {"seed": 1, "seed": 2}}', True, "'seed'"),
])
def test_duplicate_keys_are_refused(text: str, json_format: bool, where: str) -> None:
    with pytest.raises(ConfigError, match=f"duplicate key {where}"):
        parse_document(text, json_format=json_format, source="job")


def test_recursive_alias_and_deep_nesting_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="job.yaml"):
        parse_document("a: &x [*x]\n", json_format=False, source="job.yaml")
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_document("[" * 20000, json_format=True, source="job.json")


def test_load_document_picks_the_parser_by_suffix_and_refuses_binary(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text('{"a": 1}')
    (tmp_path / "job.yaml").write_text("a: 1\n")
    assert load_document(tmp_path / "job.json") == load_document(tmp_path / "job.yaml") == {"a": 1}
    (tmp_path / "weights.yaml").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_document(tmp_path / "weights.yaml")
