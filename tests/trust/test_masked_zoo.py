"""The trust checks on a zoo of gradient-masked defenses (tests/trust/zoo.py).

For each masked member: the default suite (its attacks at a small budget) marks the row unreliable
*and* its "All" accuracy lies within 10 points of the same decision attacked adaptively. Negative
controls: the honest CNN and a correctly declared BPDA defense get no such mark. Also: a leaderboard
with a masked row ranks it below the honest ones and says why.
"""

from __future__ import annotations

import pytest
import torch

from defenses import registry
from harness.report.leaderboard import ranked_defenses, render_leaderboard
from harness.engine.models import train_defense
from harness.store.results import load_result, load_results
from harness.engine.runner import RunConfig, evaluate
from harness.engine.sanity import verdict
from tests.conftest import write_learnable_idx
from tests.trust import zoo

EPS = 0.15
N = 40
#: the quick suite's attacks at a budget that fits a unit test
SUITE = """
description = "trust-test suite: the quick suite's L∞ attacks at a tiny budget"
eot_randomized = 3

[[attack]]
name = "pgd"
params = { steps = 20, rel_stepsize = 0.125 }

[[attack]]
name = "fgm"

[[attack]]
name = "deepfool"
params = { steps = 10, candidates = 10, overshoot = 0.02 }

[[attack]]
name = "noise"
params = { repeats = 5 }

[[attack]]
name = "es-pgd"
params = { steps = 5, samples = 10, sigma = 0.01, rel_stepsize = 0.5 }

[[attack]]
name = "autoattack"
params = { n_iter = 10, n_queries = 100, eot_iter = 3 }

[[attack]]
name = "square"
params = { n_queries = 300 }

[[attack]]
name = "transfer"
params = { source = "auto", steps = 40, method = "apgd", loss = "dlr" }
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Fixture data, a trained tiny-data ``cnn`` (the reference model) and the zoo registered."""
    root = tmp_path_factory.mktemp("trust")
    write_learnable_idx(root / "data" / "fmnist", n_train=600, n_test=200)
    (root / "suite.toml").write_text(SUITE, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"BENCH_DATA": root / "data", "BENCH_CHECKPOINTS": root / "ckpt", "BENCH_SKIP_CHECKSUM": "1", "XDG_CACHE_HOME": root / "cache"}.items():
            mp.setenv(k, str(v))
        from harness import datasets

        mp.setattr(datasets, "SYSTEM_DATA_ROOT", root / "no-system-data")
        datasets.clear_caches()
        registry.ensure_loaded()
        for cls in zoo.ALL:
            mp.setitem(registry._REGISTRY, cls.name, cls)
            mp.setitem(registry._ORIGIN, cls.name, "test zoo")
        train_defense("cnn", "fmnist", device=torch.device("cpu"), epochs=8, config_overrides={"batch_size": 64, "noise_sigma": 0.1},
                      progress=False, announce=lambda *_: None)
        yield root
        datasets.clear_caches()


def run(env, defense: str) -> dict:
    """The defense's row under the trust suite; evaluated once per module (every test uses the same
    suite, samples and eps, so a row another test of this worker wrote is the same row)."""
    path = env / "results" / "fmnist" / "linf" / f"{defense}.json"
    if path.exists():
        return load_result(path)
    cfg = RunConfig(defense=defense, dataset="fmnist", norm="linf", suite=str(env / "suite.toml"), n=N, eps=EPS,
                    results_dir=str(env / "results"), progress=False, train_if_missing=False)
    return load_result(evaluate(cfg, log=lambda *_: None))


def all_acc(data: dict) -> float:
    recs = data["records"]
    return sum(r["clean_correct"] and all(a["correct"] for a in r["attacks"].values()) for r in recs) / len(recs)


@pytest.mark.parametrize("masked", list(zoo.PAIRS), ids=lambda c: c.name)
def test_masked_defense_is_unreliable_and_still_broken(env, masked):
    adaptive = zoo.PAIRS[masked]
    m, a = run(env, masked.name), run(env, adaptive.name)
    vm = verdict(m)
    assert not vm.reliable, (masked.name, vm.warnings)
    # the masking-check attacks bring the masked row down to what the adaptive attack reaches
    assert all_acc(m) <= all_acc(a) + 0.10, (masked.name, all_acc(m), all_acc(a))
    # and the gradient attacks alone would have over-reported it (the point of the checks)
    grad_only = sum(r["clean_correct"] and all(r["attacks"][k]["correct"] for k in ("pgd", "fgm", "deepfool")) for r in m["records"]) / N
    assert grad_only > all_acc(m) + 0.2 or masked is zoo.SecretlyRandom


def test_honest_and_bpda_controls_stay_reliable(env):
    for name in ("cnn", zoo.ZeroGradBPDA.name):
        data = run(env, name)
        v = verdict(data)
        assert v.reliable and v.checked, (name, v.warnings)
        assert data["manifest"]["gradient_check"]["verdict"] in ("consistent", "surrogate")
    bpda = load_result(env / "results" / "fmnist" / "linf" / f"{zoo.ZeroGradBPDA.name}.json")
    assert bpda["manifest"]["gradient_check"]["declared"] == {"bpda_identity": 1}
    cnn = load_result(env / "results" / "fmnist" / "linf" / "cnn.json")
    assert cnn["manifest"]["gradient_check"]["verdict"] == "consistent"


def test_leaderboard_ranks_masked_rows_last_and_says_why(env):
    for name in ("cnn", zoo.ZeroGrad.name, zoo.ZeroGradBPDA.name):
        run(env, name)
    results = load_results(env / "results", "fmnist", "linf")
    ranked = ranked_defenses(results)
    unreliable = [d for d in ranked if not verdict(results[d]).reliable]
    assert zoo.ZeroGrad.name in unreliable and "cnn" not in unreliable
    assert ranked[-len(unreliable):] == unreliable  # below every reliable row
    text = render_leaderboard(env / "results", out_path=env / "leaderboard.md")
    row = next(line for line in text.splitlines() if line.startswith("|") and f" {zoo.ZeroGrad.name} " in line)
    assert "**unreliable**" in row
    assert "Warnings (trust checks" in text


def test_autoattack_warnings_and_transfer_source_are_recorded(env):
    data = run(env, zoo.ZeroGrad.name)
    notes = data["manifest"]["attacks"]["autoattack"].get("notes", [])
    assert any("zero gradient" in n for n in notes), notes  # pyautoattack's own warning, no longer lost on stderr
    assert data["manifest"]["attacks"]["transfer"]["notes"] == ["transfer source: the reference model cnn of fmnist"]
    by = {r["attacks"]["autoattack"].get("by") for r in data["records"]} - {None}
    assert by <= {"apgd-ce", "apgd-t", "fab-t", "square"}


def test_distilled_surrogate_breaks_a_masked_defense_without_reference(env, tmp_path):
    """No base, no reference model: the transfer source is distilled from the defense's own decisions."""
    (tmp_path / "distill.toml").write_text(
        'description = "pgd + distilled transfer"\nmasking_checks = false\n'
        '[[attack]]\nname = "pgd"\nparams = { steps = 20, rel_stepsize = 0.125 }\n'
        '[[attack]]\nname = "transfer"\nparams = { source = "distill", steps = 40, method = "apgd", loss = "dlr", distill_samples = 600, distill_epochs = 15 }\n',
        encoding="utf-8")
    cfg = RunConfig(defense=zoo.ZeroGrad.name, dataset="fmnist", norm="linf", suite=str(tmp_path / "distill.toml"), n=N, eps=EPS,
                    results_dir=str(tmp_path / "r"), progress=False, train_if_missing=False)
    data = load_result(evaluate(cfg, log=lambda *_: None))
    note = data["manifest"]["attacks"]["transfer"]["notes"][0]
    assert "distilled from the defense's decisions on 600 images" in note
    acc = {k: sum(r["attacks"][k]["correct"] for r in data["records"]) / N for k in ("pgd", "transfer")}
    assert acc["pgd"] >= 0.9 and acc["transfer"] <= acc["pgd"] - 0.3, acc
    assert not verdict(data).reliable
