"""Old import path of :mod:`harness.store.checkpoints` (public API), kept for plugins: the same module object."""
import sys

from harness.store import checkpoints

sys.modules[__name__] = checkpoints
