"""Old import path of :mod:`harness.store.results` (public API), kept for plugins: the same module object."""
import sys

from harness.store import results

sys.modules[__name__] = results
