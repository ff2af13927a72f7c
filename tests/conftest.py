"""Shared pytest fixtures (keep small and generic)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The real BCCD dataset lives in the `shared` folder beside the checkout.
BCCD_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "BCCD" / "BCCD"


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """The VOC root of the real BCCD dataset; skips the test when it is absent."""
    if not (BCCD_ROOT / "Annotations").is_dir():
        pytest.skip(f"real BCCD dataset not found at {BCCD_ROOT}")
    return BCCD_ROOT


@pytest.fixture
def one_thread():
    """One torch thread for the test (results and speed independent of the machine's cores);
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
