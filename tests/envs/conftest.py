"""Fixtures for the envs tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # `from tests.tolerances import ...` under a bare `pytest` as well
    sys.path.insert(0, _ROOT)


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread (small tensors: faster and steadier on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
