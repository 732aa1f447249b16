"""Shared fixtures of the backend integration tests: a tiny tokenizer and model built locally, never downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the unit tests' helpers (shared trace samples, plugin distributions) serve the integration tests too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A word-level tokenizer with pad/eos tokens and a chat template (see tiny_models.py)."""
    pytest.importorskip("transformers")
    from tiny_models import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen2 and its tokenizer: trainers that build a reference model load it from this path."""
    pytest.importorskip("transformers")
    from tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_model"))
