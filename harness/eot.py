"""Old import path of :mod:`harness.engine.eot` (public API), kept for plugins: the same module object."""
import sys

from harness.engine import eot

sys.modules[__name__] = eot
