"""Test-wide setup: every test starts from the same random state; ``slow`` marks the tests that
run the real runner or train (``python -m pytest -q -m "not slow"`` skips them)."""

import random

import numpy as np
import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: real runs of the runner, training or long sweeps "
                                       "(deselect with -m 'not slow')")


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Seed python, numpy and torch before every test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
