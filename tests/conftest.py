"""Fixtures shared by the core's unit tests."""

from __future__ import annotations

import pytest
import torch
from batches import random_policy_tensors


@pytest.fixture
def policy_tensors() -> dict[str, torch.Tensor]:
    return random_policy_tensors()
