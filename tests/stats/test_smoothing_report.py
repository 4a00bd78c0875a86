"""docs/smoothing.md (thesis Tables 4.1/4.2 shape) from per-eps result directories."""

from pathlib import Path

import pytest

from harness.report.smoothing_report import load_runs, render_smoothing, write_smoothing
from tests.stats.make_results import bools, fake_result, write_result

THESIS = Path(__file__).resolve().parents[2] / "docs" / "thesis_smoothing.toml"


def _write(root, eps, accs):
    """accs: defense -> (clean correct, autoattack correct) out of 40."""
    for d, (c, a) in accs.items():
        write_result(root / f"eps{eps}", fake_result(d, "fmnist", "linf", bools(c, 40), {"autoattack": bools(a, 40)}, eps=eps))


def test_tables_per_eps_with_mcnemar_and_growing_eps(tmp_path):
    _write(tmp_path, 0.1, {"cnn": (36, 4), "vsmooth-cnn": (30, 8), "cnn-gauss": (36, 6), "vsmooth-cnn-gauss": (32, 12)})
    _write(tmp_path, 0.02, {"cnn": (36, 20), "vsmooth-cnn": (36, 30), "cnn-gauss": (36, 24)})  # one model not run
    runs = load_runs(tmp_path, "fmnist", "linf")
    assert list(runs) == [0.02, 0.1]  # ascending, read from the manifests
    text = render_smoothing(tmp_path, THESIS)
    assert "## Table 4.1 shape: L∞ eps = 0.02" in text and "## Table 4.1 shape: L∞ eps = 0.1" in text
    assert text.index("eps = 0.02") < text.index("eps = 0.1")
    # vsmooth-cnn at 0.02: 30/40 = 75.0 %, base 50.0 %: 10 discordant pairs, exact McNemar p = 2 * 0.5**10
    line = next(l for l in text.splitlines() if l.startswith("| CNN + smoothing ") and "75.0" in l)
    assert "90.0" in line and "0.002" in line
    assert "not run" in text  # vsmooth-cnn-gauss at 0.02
    t42 = text[text.index("Table 4.2 shape"):]
    row = next(l for l in t42.splitlines() if l.startswith("| Gaussian CNN + smoothing"))
    assert "not run" in row and "30.0" in row  # 12/40 at 0.1
    assert "72.3" in text and "2/255" in text  # thesis numbers quoted
    assert write_smoothing(tmp_path, THESIS, tmp_path / "s.md") and not write_smoothing(tmp_path, THESIS, tmp_path / "s.md")


def test_mixed_eps_in_one_directory_is_rejected(tmp_path):
    write_result(tmp_path / "a", fake_result("cnn", "fmnist", "linf", bools(3, 4), {"autoattack": bools(1, 4)}, eps=0.1))
    write_result(tmp_path / "a", fake_result("cnn-gauss", "fmnist", "linf", bools(3, 4), {"autoattack": bools(1, 4)}, eps=0.05))
    with pytest.raises(ValueError, match="mixes eps"):
        load_runs(tmp_path, "fmnist", "linf")


def test_transfer_and_all_columns_when_a_run_has_transfer(tmp_path):
    for d, clean, aa, tr in (("cnn", 36, 20, 18), ("vsmooth-cnn", 36, 30, 10)):
        write_result(tmp_path / "e", fake_result(d, "fmnist", "linf", bools(clean, 40), {"autoattack": bools(aa, 40), "transfer": bools(tr, 40)}, eps=0.05))
    text = render_smoothing(tmp_path, THESIS)
    head = next(l for l in text.splitlines() if l.startswith("| Model") and "Transfer" in l)
    assert "All" in head and "p All" in head
    line = next(l for l in text.splitlines() if l.startswith("| CNN + smoothing "))
    assert "75.0" in line and "25.0" in line  # AutoAttack 30/40, transfer (= All) 10/40
    assert "All (AutoAttack, transfer)" in text
