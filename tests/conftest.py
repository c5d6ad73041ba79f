"""Every test starts from the same random state, so a run is reproducible. Tests marked
``slow`` (minutes, e.g. building the package) run in ``make test``; ``-m 'not slow'``
leaves them out."""
import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes minutes; deselect with -m "not slow"')


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
