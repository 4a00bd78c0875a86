"""One torch thread for the NEAT tests: small batches on a loaded 2-core machine run ~100x slower with two."""

import pytest

from tests.conftest import single_torch_thread

_one_torch_thread = pytest.fixture(autouse=True)(single_torch_thread)
