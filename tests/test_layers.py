"""No import cycle among the top-level packages: ``benchcore`` <- ``threat_models`` <- ``defenses`` <- ``harness``.

Each package is imported alone in a fresh interpreter (``defenses`` with every built-in defense
module, ``harness`` with its evaluation modules) and ``sys.modules`` must not hold a package above it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchcore", "threat_models", "defenses", "harness")

CASES = {
    # what is imported                                   packages that must not be loaded
    "import benchcore, benchcore.errors, benchcore.io": ("threat_models", "defenses", "harness"),
    "import threat_models": ("defenses", "harness"),
    "import defenses; defenses.registry.ensure_loaded()": ("harness",),
    "import harness, harness.errors, harness.results": ("threat_models", "defenses"),
}


@pytest.mark.parametrize("code", list(CASES))
def test_package_imports_nothing_above_it(code):
    probe = f"import sys, json; {code}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert not loaded & set(CASES[code]), f"{code!r} loaded {sorted(loaded & set(CASES[code]))}"
    assert loaded & set(PACKAGES)  # the probe did import something of ours


def test_the_whole_harness_imports_in_a_fresh_interpreter():
    """The top layer imports everything below it without a cycle (an ImportError of a partly initialised module would fail here)."""
    code = "import harness.runner, harness.sweep, harness.cli, harness.leaderboard, harness.reproduction, harness.smoothing_report"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
