"""One torch thread for the NEAT tests: small batches on a loaded 2-core machine run ~100x slower with two."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
