"""``bench export robustbench``: RobustBench leaderboard entries from result files, sidecars, the unreliable flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.report.robustbench_export import FIELDS, OPTIONAL, build_entry, eps_string, export_robustbench
from tests.stats.make_results import bools, fake_result, write_result

REPO = Path(__file__).resolve().parents[2]

#: RobustBench's model_info field types (e.g. model_info/cifar10/Linf/Carmon2019Unlabeled.json)
TYPES = {"link": str, "name": str, "authors": str, "additional_data": bool, "number_forward_passes": int, "dataset": str, "venue": str,
         "architecture": str, "eps": str, "clean_acc": str, "reported": str, "autoattack_acc": str, "external": str, "footnote": str, "unreliable": bool}


def check_entry(entry: dict) -> None:
    assert set(FIELDS) <= set(entry) <= set(FIELDS) | set(OPTIONAL), sorted(entry)
    assert list(entry)[: len(FIELDS)] == list(FIELDS)
    for key, value in entry.items():
        assert type(value) is TYPES[key], (key, value)
    for key in ("clean_acc", "autoattack_acc", "external"):
        if key in entry:
            whole, _, frac = entry[key].partition(".")
            assert whole.isdigit() and len(frac) == 2 and 0 <= float(entry[key]) <= 100, entry[key]
    assert "unreliable" in entry
    assert ("footnote" in entry) == ("external" in entry) == entry["unreliable"]


def _results(tmp_path: Path, *, broken_by_others: int) -> Path:
    """100 samples: 90 clean-correct, AutoAttack leaves 60; PGD breaks ``broken_by_others`` of those 60 as well."""
    n = 100
    clean = bools(90, n)
    aa = bools(60, n)
    pgd = [False] * broken_by_others + bools(60 - broken_by_others, n - broken_by_others)
    write_result(tmp_path, fake_result("weak-aa", "fmnist", "linf", clean, {"pgd": pgd, "autoattack": aa, "noise": bools(90, n)}))
    return tmp_path


def test_unreliable_when_all_is_significantly_below_autoattack(tmp_path):
    root = _results(tmp_path / "r", broken_by_others=20)
    written, skipped = export_robustbench(root, "fmnist", "linf", tmp_path / "out")
    assert not skipped and len(written) == 1
    ex, path = written[0]
    entry = json.loads(path.read_text())
    check_entry(entry)
    assert entry["unreliable"] is True and entry["autoattack_acc"] == "60.00" and entry["external"] == "40.00" and entry["clean_acc"] == "90.00"
    assert "AutoAttack alone over-reports" in entry["footnote"]
    side = json.loads(path.with_name("weak-aa.bench.json").read_text())
    assert side["n"] == 100 and side["all"]["k"] == 40 and side["autoattack"]["k"] == 60
    assert side["all_vs_autoattack"]["pvalue"] < 0.01 and side["all_vs_autoattack"]["autoattack_robust_all_broken"] == 20
    lo, hi = side["accuracy"]["all"]["lo"], side["accuracy"]["all"]["hi"]
    assert lo < 0.40 < hi and side["interval"] == "Wilson 95%"
    assert isinstance(side["warnings"], list) and "reliable" in side["verdict"]


def test_not_unreliable_when_the_gap_is_noise(tmp_path):
    root = _results(tmp_path / "r", broken_by_others=2)
    (ex, path), = export_robustbench(root, "fmnist", "linf", tmp_path / "out")[0]
    entry = json.loads(path.read_text())
    check_entry(entry)
    assert entry["unreliable"] is False and "external" not in entry and "footnote" not in entry
    assert ex.sidecar["all"]["k"] == 58 and ex.sidecar["all_vs_autoattack"]["pvalue"] > 0.01


def test_result_without_autoattack_is_skipped(tmp_path):
    write_result(tmp_path / "r", fake_result("pgd-only", "fmnist", "linf", bools(9, 10), {"pgd": bools(5, 10)}))
    written, skipped = export_robustbench(tmp_path / "r", "fmnist", "linf", tmp_path / "out")
    assert written == [] and skipped[0][0] == "pgd-only" and "no AutoAttack row" in skipped[0][1]


def test_eps_string():
    assert eps_string({"eps": 8 / 255, "eps_label": "8/255"}) == "8/255"
    assert eps_string({"eps": 0.1, "eps_label": "0.1"}) == "0.1"
    assert eps_string({"eps": 0.5}) == "0.5"


def test_robustbench_defense_exports_under_its_entry_name(tmp_path):
    data = fake_result("robustbench-Standard", "cifar10", "linf", bools(9, 10), {"autoattack": bools(0, 10)}, eps=8 / 255)
    data["manifest"]["defense"] = "robustbench:Standard"
    data["manifest"]["eps_label"] = "8/255"
    ex = build_entry("robustbench-Standard", data)
    check_entry(ex.entry)
    assert ex.model == "Standard" and ex.entry["architecture"] == "WideResNet-28-10" and ex.entry["eps"] == "8/255"
    assert ex.entry["reported"] == "0.0" and ex.entry["link"].startswith("https://")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_export_committed_fmnist_results(tmp_path, norm, capsys):
    results = REPO / "results"
    if not (results / "fmnist" / norm).is_dir():
        pytest.skip("no committed fmnist results")
    rc = main(["export", "robustbench", "--dataset", "fmnist", "--norm", norm, "--results-dir", str(results), "--out", str(tmp_path),
               "--thesis", str(REPO / "docs" / "thesis_fmnist.toml")])
    assert rc == 0, capsys.readouterr().err
    folder = tmp_path / "fmnist" / {"linf": "Linf", "l2": "L2"}[norm]
    entries = sorted(p for p in folder.glob("*.json") if not p.name.endswith(".bench.json"))
    assert entries
    for p in entries:
        entry = json.loads(p.read_text())
        check_entry(entry)
        assert entry["dataset"] == "fmnist" and entry["eps"] == {"linf": "0.1", "l2": "1.5"}[norm]
        assert p.with_name(p.stem + ".bench.json").is_file()
    assert json.loads((folder / "cnn.json").read_text())["reported"] == {"linf": "9.40", "l2": "13.20"}[norm]  # thesis Table 2.3 "All"


def test_export_without_results_is_a_user_error(tmp_path, capsys):
    rc = main(["export", "robustbench", "--dataset", "fmnist", "--norm", "linf", "--results-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no results for fmnist/linf" in capsys.readouterr().err


def test_committed_smoothing_results_flag_autoattack_over_reporting(tmp_path):
    """docs/smoothing.md: AutoAttack alone leaves the smoothed Gaussian CNN far more robust than the worst case."""
    results = REPO / "results" / "smoothing" / "eps0.1"
    if not (results / "fmnist" / "linf" / "vsmooth-cnn-gauss.json").is_file():
        pytest.skip("no committed smoothing results")
    written, _ = export_robustbench(results, "fmnist", "linf", tmp_path)
    flags = {ex.model: ex.entry["unreliable"] for ex, _ in written}
    assert flags["vsmooth-cnn-gauss"] is True and flags["cnn"] is False
