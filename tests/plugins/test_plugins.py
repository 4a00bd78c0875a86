"""Plugins: the example package installs, is discovered through `bench.defenses`, and runs end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_bench

ROOT = Path(__file__).resolve().parents[2]


def install_examples(target: Path, *examples: str) -> str:
    """pip-install the example packages ``examples/<name>`` into the private folder ``target`` (not the venv)."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), *(str(ROOT / "examples" / e) for e in examples)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return str(target)


@pytest.fixture
def plugin_path(bench_env):
    return install_examples(bench_env / "site", "plugin-defense")


def _env(*paths):
    return {"PYTHONPATH": os.pathsep.join([*paths, str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_installed_plugin_is_listed_and_runs(plugin_path, bench_env):
    env = _env(plugin_path)
    listed = run_bench("list", "defenses", env_extra=env)
    assert listed.returncode == 0 and "linear-svm" in listed.stdout
    out = bench_env / "r"
    r = run_bench("run", "--defense", "linear-svm", "--norm", "l2", "--n", "20", "--attacks", "pgd,fgm", "--results-dir", str(out), "--quiet", env_extra=env)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "fmnist" / "l2" / "linear-svm.json").read_text())
    assert len(data["records"]) == 20
    assert data["manifest"]["gradient_policy"] == "exact autograd gradient of the linear scores"


def _fake_dist(site: Path, dist: str, entry: str) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bench.defenses]\n{entry}\n")


def test_broken_plugin_is_reported_and_others_work(bench_env):
    site = bench_env / "broken-site"
    _fake_dist(site, "broken_plugin", "broken = module_that_does_not_exist:Thing")
    env = _env(str(site))
    r = run_bench("list", "defenses", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert "cnn" in r.stdout
    assert "broken" in r.stdout and "BROKEN" in r.stdout and "module_that_does_not_exist" in r.stdout
    r2 = run_bench("run", "--defense", "broken", "--norm", "linf", env_extra=env)
    assert r2.returncode == 2 and "failed to load" in r2.stderr


def test_duplicate_name_is_an_error(bench_env):
    site = bench_env / "dup-site"
    (site / "dup_cnn").mkdir(parents=True)
    (site / "dup_cnn" / "__init__.py").write_text(
        "from defenses.cnn import CNN\nclass Dup(CNN):\n    name = 'cnn'\n"
    )
    _fake_dist(site, "dup_cnn", "cnn = dup_cnn:Dup")
    r = run_bench("list", "defenses", env_extra=_env(str(site)))
    assert r.returncode == 0
    assert "registered twice" in r.stdout


def test_register_decorator_rejects_duplicates():
    from defenses.cnn import CNN
    from defenses.registry import DuplicateDefenseError, register

    class Other(CNN):
        name = "cnn"

    with pytest.raises(DuplicateDefenseError):
        register(Other)
