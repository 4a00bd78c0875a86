"""Old import path of :mod:`harness.engine.runner` (public API), kept for plugins: the same module object."""
import sys

from harness.engine import runner

sys.modules[__name__] = runner
