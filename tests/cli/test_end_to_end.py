"""`bench train` + `bench run` + `bench table` end to end on tiny canonical-format data."""

import json
import math

import pytest

from tests.conftest import run_bench


@pytest.fixture
def trained(bench_env):
    r = run_bench("train", "--defense", "cnn", "--dataset", "fmnist", "--epochs", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    return bench_env


def test_train_writes_safetensors_and_model_card(trained):
    ckpt = trained / "cache" / "bench" / "checkpoints"
    card = json.loads((ckpt / "cnn-fmnist.json").read_text())
    assert (ckpt / "cnn-fmnist.safetensors").is_file()
    for key in ("command", "config", "epochs", "wall_time_s", "val_acc", "data_checksum", "code_commit", "sha256"):
        assert key in card, key
    assert card["epochs"] == 3 and card["config"]["batch_size"] == 512 and card["config"]["noise_sigma"] == 0.2
    assert card["val_acc"] > 0.5  # the tiny data is learnable


def test_run_writes_verified_results_and_resumes(trained):
    out = trained / "r"
    r = run_bench("run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--n", "40", "--results-dir", str(out), "--attacks", "pgd,fgm", "--quiet")
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "fmnist" / "linf" / "cnn.json").read_text())
    m = data["manifest"]
    assert m["n"] == 40 and len(data["records"]) == 40 and len(set(m["sample_ids"])) == 40
    assert list(m["attacks"]) == ["pgd", "fgm"]
    assert m["gradient_policy"] and m["checkpoint_sha256"] and m["versions"]["torch"]
    for rec in data["records"]:
        for name, a in rec["attacks"].items():
            assert not (a["correct"] and not rec["clean_correct"])
            assert "recheck_flip" not in a  # a deterministic defense's verdicts need no second scoring
            if not a["correct"]:
                assert a["norm"] is not None and a["norm"] <= 0.1 + 1e-5  # verified inside the ball
    assert "PGD" in r.stdout and "All L∞" in r.stdout

    # rerun: nothing recomputed (same file contents), then adding an attack only runs that one
    before = (out / "fmnist" / "linf" / "cnn.json").read_text()
    r2 = run_bench("run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--n", "40", "--results-dir", str(out), "--attacks", "pgd,fgm", "--quiet")
    assert r2.returncode == 0 and "already done" in r2.stdout
    assert json.loads(before)["records"] == json.loads((out / "fmnist" / "linf" / "cnn.json").read_text())["records"]
    # a different n would silently mix samples: refused with exit 2
    r3 = run_bench("run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--n", "30", "--results-dir", str(out), "--quiet")
    assert r3.returncode == 2 and "--fresh" in r3.stderr


def test_table_with_two_defenses_prints_mcnemar(trained):
    out = trained / "r"
    r = run_bench("run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--n", "30", "--results-dir", str(out), "--attacks", "fgm", "--quiet")
    assert r.returncode == 0, r.stderr
    # a second "defense" file: same samples, copied under another name, with outcomes flipped both ways
    src = out / "fmnist" / "linf" / "cnn.json"
    data = json.loads(src.read_text())
    data["manifest"]["defense"] = "cnn-copy"
    broken = [r for r in data["records"] if r["clean_correct"] and not r["attacks"]["fgm"]["correct"]]
    robust = [r for r in data["records"] if r["clean_correct"] and r["attacks"]["fgm"]["correct"]]
    assert broken and robust, "the tiny CNN should be broken by FGM on some samples and not on others"
    repaired, spoiled = broken[:5], robust[:2]
    for rec in repaired:
        rec["attacks"]["fgm"]["correct"] = True  # wrong under cnn, right under the copy
    for rec in spoiled:
        rec["attacks"]["fgm"]["correct"] = False  # right under cnn, wrong under the copy
    (out / "fmnist" / "linf" / "cnn-copy.json").write_text(json.dumps(data))
    t = run_bench("table", "--dataset", "fmnist", "--norm", "linf", "--results-dir", str(out))
    assert t.returncode == 0, t.stderr
    # the discordant counts of the "All" row (FGM is the only attack) and the exact binomial p-value, by hand
    b01, b10 = len(repaired), len(spoiled)
    k, n = min(b01, b10), b01 + b10
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    from harness import stats
    from harness.store.results import load_results
    from harness.report.tables import ordered

    pair = stats.pairwise_mcnemar_long(ordered(load_results(out, "fmnist", "linf")), stats.ALL).iloc[0]  # table order: cnn first
    assert (pair["a"], pair["b"], pair["n"], pair["b01"], pair["b10"], pair["method"]) == ("cnn", "cnn-copy", 30, b01, b10, "exact")
    assert pair["pvalue"] == pytest.approx(p)
    assert "McNemar p-values, All L∞ (exact binomial when discordant < 25) on 30 shared samples" in t.stdout
    row = next(line for line in t.stdout.splitlines() if line.startswith("| CNN ") and "|" in line[6:] and "%" not in line)
    assert f"{p:.3f}" in row, row  # the printed p-value
