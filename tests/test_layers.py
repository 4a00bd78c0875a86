"""No import cycle among the top-level packages: ``benchcore`` <- ``threat_models`` <- ``defenses`` <- ``harness``,
and inside ``harness`` none among its layers (README "Architecture").

Each package is imported alone in a fresh interpreter (``defenses`` with every built-in defense
module, ``harness`` with its evaluation modules) and ``sys.modules`` must not hold a package above it.
Imports inside functions run only when called, so the source is read too: no module of a package
contains an import of a package above it anywhere (top level, function, class; ``importlib``
calls with a literal name included). The layers of ``harness`` are checked both ways as well.
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


def imported_modules(source: str, module: str | None = None) -> set[str]:
    """Dotted names of every module ``source`` imports, wherever the import statement is; for
    ``from M import a`` both ``M`` and ``M.a`` (``a`` may be a submodule). Relative imports are
    resolved against ``module`` (the importing module's name), or left out without it."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                base = ".".join(module.split(".")[: -node.level] + ([node.module] if node.module else []))
            else:
                base = node.module
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if fn in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def imported_packages(source: str) -> set[str]:
    """Top-level names of every module ``source`` imports (absolute imports), wherever the import statement is."""
    return {m.split(".")[0] for m in imported_modules(source)}


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


#: the layers of harness (README "Architecture"): part -> parts of harness it must never import
HARNESS = ("errors", "stats", "store", "datasets", "attacks", "engine", "experiments", "report", "orchestration", "cli")
HARNESS_ABOVE = {
    "errors": set(HARNESS) - {"errors"},
    "stats": set(HARNESS) - {"errors", "stats"},
    "store": set(HARNESS) - {"errors", "store"},
    "datasets": set(HARNESS) - {"errors", "datasets"},
    "attacks": {"experiments", "report", "orchestration", "cli"},  # beside the engine: it calls attacks, transfer loads models
    "engine": {"experiments", "report", "orchestration", "cli"},
    "experiments": {"report", "orchestration", "cli"},
    "report": {"orchestration", "cli"},
    "orchestration": {"experiments", "report", "cli"},
}
#: old import paths kept for plugins and scripts (the same module objects); harness's own code uses the new ones
ALIASES = {"harness.results": "harness.store.results", "harness.checkpoints": "harness.store.checkpoints",
           "harness.runner": "harness.engine.runner", "harness.verify": "harness.engine.verify", "harness.eot": "harness.engine.eot"}


def harness_part(name: str) -> str | None:
    """The layer of a dotted name inside harness (``harness.store.results`` -> ``store``), else None."""
    parts = name.split(".")
    return parts[1] if parts[0] == "harness" and len(parts) > 1 and parts[1] in HARNESS else None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_layer_scan_resolves_relative_and_from_imports():
    assert imported_modules("from ..errors import X\nfrom . import _names\n", "harness.datasets._traffic") == {"harness.errors", "harness.errors.X", "harness.datasets", "harness.datasets._names"}
    assert harness_part("harness.report.tables") == "report" and harness_part("harness.errors.BenchUserError") == "errors"
    assert harness_part("harness") is None and harness_part("harnessx.report") is None
    src = "def f():\n    from harness import report\n"
    assert {harness_part(m) for m in imported_modules(src, "harness.store.results")} >= {"report"}


@pytest.mark.parametrize("part", list(HARNESS_ABOVE))
def test_no_harness_module_imports_a_layer_above_it(part):
    base = ROOT / "harness" / part
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    assert files and all(f.is_file() for f in files)
    bad = {}
    for f in files:
        name = module_name(f)
        hits = sorted({m for m in imported_modules(f.read_text(encoding="utf-8"), name) if harness_part(m) in HARNESS_ABOVE[part]})
        if hits:
            bad[name] = hits
    assert not bad, f"modules of harness.{part} import a layer above it: {bad}"


RUNTIME = {
    # what is imported                                                        harness layers that must not be loaded
    "import harness.store.results, harness.store.checkpoints, harness.store.provenance": {"engine", "attacks", "report", "orchestration", "experiments", "stats", "datasets"},
    "import harness.engine.runner, harness.engine.calibrate, harness.attacks; harness.attacks.list_attacks()": {"report", "orchestration", "experiments"},
    "import harness.experiments.synthesis, harness.experiments.decompose, harness.experiments.fooling": {"report", "orchestration"},
    "import harness.report.leaderboard, harness.report.reproduction, harness.report.smoothing_report, harness.report.synthesis_report": {"orchestration"},
    "import harness.orchestration.sweep, harness.orchestration.executors.local": {"report", "experiments"},
}


@pytest.mark.parametrize("code", list(RUNTIME))
def test_harness_layer_loads_nothing_above_it(code):
    probe = f"import sys, json; {code}; print(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = {harness_part(m) for m in json.loads(r.stdout.strip().splitlines()[-1])}
    assert not loaded & RUNTIME[code], f"{code!r} loaded {sorted(loaded & RUNTIME[code])}"


@pytest.mark.parametrize("old", list(ALIASES))
def test_old_import_path_is_the_moved_module(old):
    code = f"import importlib, sys; a = importlib.import_module({old!r}); b = importlib.import_module({ALIASES[old]!r}); print(a is b and sys.modules[{old!r}] is b)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr or r.stdout


def _source_files(dirs: tuple[str, ...]) -> list[Path]:
    """The repository's Python files under ``dirs``: those git tracks or would track (build outputs
    such as an installed plugin's ``build/`` copy are ignored files, not sources)."""
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *dirs], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if r.returncode == 0 and r.stdout.strip():
        return sorted({ROOT / p for p in r.stdout.splitlines() if p.endswith(".py") and (ROOT / p).is_file()})
    return sorted(f for d in dirs for f in (ROOT / d).rglob("*.py") if not {"build", ".venv"} & set(f.parts))  # not a git checkout


def test_nothing_in_the_repository_imports_an_old_path():
    """The aliases are for code outside the repository; inside it every import names the layer."""
    files = _source_files(("harness", "tests", "benchmarks", "examples", "docs"))
    aliases = {ROOT / (old.replace(".", "/") + ".py") for old in ALIASES}
    bad = {}
    for f in files:
        if f in aliases:
            continue
        hits = sorted(m for m in imported_modules(f.read_text(encoding="utf-8"), module_name(f)) if any(m == a or m.startswith(a + ".") for a in ALIASES))
        if hits:
            bad[str(f.relative_to(ROOT))] = hits
    assert not bad, f"import the new path (harness.store / harness.engine): {bad}"
