import pytest
import torch

# The suite runs as two xdist workers on two cores: one thread each avoids
# oversubscription (which makes float64 gradchecks tens of times slower).
torch.set_num_threads(1)

# Scripts that tests start in subprocesses; importing them (doctest collection) would run them.
collect_ignore = ["engine/run_standin.py"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
