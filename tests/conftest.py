"""Shared test settings: one thread (faster on this machine) and a fixed default dtype."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed: every random draw in a test goes through it."""
    return torch.Generator().manual_seed(0)
