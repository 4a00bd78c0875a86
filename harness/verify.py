"""Old import path of :mod:`harness.engine.verify` (public API), kept for plugins: the same module object."""
import sys

from harness.engine import verify

sys.modules[__name__] = verify
