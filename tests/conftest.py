"""Every test starts from the same random state, so a run is reproducible."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
