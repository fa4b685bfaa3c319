import pytest
import torch


@pytest.fixture
def synthetic(monkeypatch):
    "The zoo's synthetic stand-ins (as under nbdev_test), one torch thread: `pytestmark = pytest.mark.usefixtures('synthetic')`."
    monkeypatch.setenv('INDUCTION_NB_TEST', '1')
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
