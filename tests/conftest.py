"""Test-wide setup: every test starts from the same random state; ``slow`` marks the tests that
run the real runner or train (``python -m pytest -q -m "not slow"`` skips them)."""

# ruff: noqa: E402  (the OpenMP setting below must precede the first import of torch)
import os
import random

# as runner.py sets it for every run: OpenMP threads sleep between parallel regions instead of
# spinning, so that two test processes (pytest -n 2) do not spin on each other's cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
