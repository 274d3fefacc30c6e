"""Shared test set-up: a bounded, derandomised hypothesis profile and a seeded torch RNG."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# derandomize=True fixes hypothesis' seed, so every run draws the same examples.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=50,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The machine's cores are shared; the tensors here are small, so one thread is fastest overall.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same torch RNG state."""
    torch.manual_seed(0)
