"""Attack plugins: the example package (examples/plugin-attack, BIM) installs, is discovered through
`bench.attacks`, runs through `bench run --attacks` with its candidates verified, and is priced by
`bench sweep --dry-run`; a broken attack plugin is reported without breaking the others."""

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_bench
from tests.plugins.test_plugins import install_examples

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugins_path(bench_env):
    """The example attack plugin and the example defense plugin (a linear SVM: trains in seconds), installed into a private target."""
    return install_examples(bench_env / "site", "plugin-attack", "plugin-defense")


def _env(*paths):
    return {"PYTHONPATH": os.pathsep.join([*paths, str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_installed_attack_plugin_is_listed_runs_and_is_priced(plugins_path, bench_env):
    env = _env(plugins_path)
    listed = run_bench("list", "attacks", env_extra=env)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("bim "))
    assert "bounded" in line and "gradient" in line and "plugin" in line
    # the plugin's shipped weights are for the real Fashion-MNIST: train it on the fixture data first
    t = run_bench("train", "--defense", "linear-svm", "--dataset", "fmnist", "--quiet", env_extra=env)
    assert t.returncode == 0, t.stderr
    out = bench_env / "r"
    r = run_bench("run", "--defense", "linear-svm", "--norm", "linf", "--n", "20", "--attacks", "fgm,bim", "--results-dir", str(out), "--quiet", env_extra=env)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "fmnist" / "linf" / "linear-svm.json").read_text())
    entry = data["manifest"]["attacks"]["bim"]
    assert list(data["manifest"]["attacks"]) == ["fgm", "bim"]
    assert entry["budget"] == "10 steps x 1 restarts, EOT 1" and entry["spec"]["params"] == {"steps": 10} and entry["kind"] == "bounded"
    recs = data["records"]
    eps = data["manifest"]["eps"]
    for rec in recs:
        a = rec["attacks"]["bim"]
        assert not (a["correct"] and not rec["clean_correct"])
        if rec["clean_correct"] and not a["correct"]:
            assert a["norm"] is not None and 0 < a["norm"] <= eps + 1e-5  # verified inside the ball
    clean = sum(r["clean_correct"] for r in recs)
    bim = sum(r["attacks"]["bim"]["correct"] for r in recs)
    assert clean >= 10 and bim < clean  # it found verified adversarials
    # the table labels the plugin attack with its declared label
    table = run_bench("table", "--dataset", "fmnist", "--norm", "linf", "--results-dir", str(out), env_extra=env)
    assert table.returncode == 0 and "BIM" in table.stdout, table.stderr
    # bench sweep --dry-run prices it from its declaration (cost 10 per sample, plus 0.2 for the clean pass)
    suite = bench_env / "bim.toml"
    suite.write_text('masking_checks = false\n[[attack]]\nname = "bim"\nparams = { steps = 10 }\n')
    plan = bench_env / "plan.toml"
    plan.write_text(f'defenses = ["linear-svm"]\ndatasets = ["fmnist"]\nnorms = ["linf"]\nsuites = ["{suite}"]\nn = 50\nbatch_size = 50\n')
    dry = run_bench("sweep", str(plan), "--dry-run", env_extra=env)
    assert dry.returncode == 0, dry.stderr
    assert "1 jobs; estimated cost 510 units" in dry.stdout, dry.stdout


def test_broken_attack_plugin_is_reported_and_others_work(bench_env):
    site = bench_env / "broken-site"
    info = site / "broken_attack-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken_attack\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.attacks]\nbroken-attack = module_that_does_not_exist:Thing\n")
    env = _env(str(site))
    r = run_bench("list", "attacks", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert "pgd" in r.stdout and "broken-attack" in r.stdout and "BROKEN" in r.stdout and "module_that_does_not_exist" in r.stdout
    r2 = run_bench("run", "--defense", "cnn", "--norm", "linf", "--attacks", "broken-attack", "--no-train", env_extra=env)
    assert r2.returncode == 2 and "failed to load" in r2.stderr, r2.stderr


def test_registry_rejects_duplicates_and_bad_declarations():
    from harness.attacks import register
    from harness.attacks.base import Attack
    from harness.attacks.foolbox_attacks import PGD
    from harness.attacks.registry import DuplicateAttackError

    class Other(PGD):
        pass

    with pytest.raises(DuplicateAttackError):
        register(Other)

    class NoLabel(Attack):
        name = "no-label"

    with pytest.raises(ValueError, match="label"):
        register(NoLabel)

    class BadUse(Attack):
        name, label, uses = "bad-use", "Bad", "telepathy"

    with pytest.raises(ValueError, match="uses"):
        register(BadUse)
