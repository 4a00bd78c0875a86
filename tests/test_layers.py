"""No import cycle among the top-level packages: ``benchcore`` <- ``threat_models`` <- ``defenses`` <- ``harness``.

Each package is imported alone in a fresh interpreter (``defenses`` with every built-in defense
module, ``harness`` with its evaluation modules) and ``sys.modules`` must not hold a package above it.
Imports inside functions run only when called, so the source is read too: no module of a package
contains an import of a package above it anywhere (top level, function, class; ``importlib``
calls with a literal name included).
"""

import ast
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
    "import harness, harness.errors, harness.store.results": ("threat_models", "defenses"),
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
    code = "import harness.engine.runner, harness.orchestration.sweep, harness.cli, harness.report.leaderboard, harness.report.reproduction, harness.report.smoothing_report"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr


#: package -> packages above it, which none of its modules may import
ABOVE = {"benchcore": ("threat_models", "defenses", "harness"), "threat_models": ("defenses", "harness"), "defenses": ("harness",)}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every module ``source`` imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if fn in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_import_scan_sees_function_local_imports():
    src = "import torch\n\ndef f():\n    from harness.store.checkpoints import user_dir\n\nclass C:\n    def g(self):\n        import harness.attacks\n"
    assert imported_packages(src) == {"torch", "harness"}
    assert imported_packages("import importlib\nimportlib.import_module('harness.engine.models')\n") == {"importlib", "harness"}
    assert imported_packages("from . import x\nfrom defenses.base import Defense\n") == {"defenses"}


@pytest.mark.parametrize("package", list(ABOVE))
def test_no_module_imports_a_package_above_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(imported_packages(f.read_text(encoding="utf-8")) & set(ABOVE[package])) for f in files}
    assert not {k: v for k, v in bad.items() if v}, f"modules of {package} import a package above it: {bad}"
