"""Fixtures shared by the core's unit tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from batches import random_policy_tensors

OPENAI_SERVER = Path(__file__).with_name("openai_server.py")


@pytest.fixture
def policy_tensors() -> dict[str, torch.Tensor]:
    return random_policy_tensors()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real OpenAI-compatible server process on loopback (tests/openai_server.py); its base URL."""
    process = subprocess.Popen([sys.executable, str(OPENAI_SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.terminate()
        process.wait(timeout=10)
