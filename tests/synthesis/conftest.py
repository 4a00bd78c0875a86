"""One torch thread for the synthesis tests (small batches on a shared 2-core machine)."""

import pytest

from tests.conftest import single_torch_thread

_one_torch_thread = pytest.fixture(autouse=True)(single_torch_thread)
