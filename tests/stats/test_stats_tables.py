"""Thesis-style tables, p-value matrix, budgets and the CLI report."""

import pytest
from make_results import bools, fake_result, write_result

from harness.report import tables
from harness.errors import BenchUserError


def _results():
    return {
        "eabs": fake_result("eabs", "fmnist", "linf", bools(90, 100), {"pgd": bools(45, 100), "deepfool": bools(50, 100)}),
        "zeta": fake_result("zeta", "fmnist", "linf", bools(80, 100), {"pgd": bools(30, 100)}),
        "cnn": fake_result("cnn", "fmnist", "linf", bools(91, 100), {"pgd": bools(9, 100), "noise": bools(90, 100)}),
        "adv-linf": fake_result("adv-linf", "fmnist", "linf", bools(89, 100), {"pgd": bools(57, 100)}),
    }


def test_defense_order_canonical_then_alphabetical():
    assert tables.defense_order(["zeta", "eabs", "alpha", "cnn", "adv-l2"]) == ["cnn", "adv-l2", "eabs", "alpha", "zeta"]


def test_render_table_shape_and_cells():
    text = tables.render_table(_results())
    lines = text.splitlines()
    assert lines[0].startswith("dataset fmnist · norm L∞ · eps 0.1 · n = 100")
    header = next(l for l in lines if "CNN" in l)
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["", "CNN", "Adv-L∞", "E-ABS", "zeta"]
    body = [l for l in lines if l.startswith("| ") and "---" not in l][1:]
    assert [l.strip("|").split("|")[0].strip() for l in body] == ["Clean", "PGD", "Noise", "DeepFool", "All L∞"]  # first-seen, canonical defense order
    clean = [c.strip() for c in body[0].strip("|").split("|")]
    assert clean[1] == "91.0% [83.8, 95.2]"
    noise = [c.strip() for c in body[2].strip("|").split("|")]
    assert noise[1] == "90.0% [82.6, 94.5]" and noise[2] == "—"
    assert "different attacks" in lines[0]


def test_render_table_plain_and_bad_fmt():
    text = tables.render_table(_results(), fmt="plain")
    assert "All L∞" in text and "|" not in text.split("\n", 2)[2]
    with pytest.raises(ValueError):
        tables.render_table(_results(), fmt="latex")


def test_render_table_notes_different_sample_sets_and_n():
    r = {"cnn": fake_result("cnn", "mnist", "l2", bools(5, 10), {"pgd": bools(2, 10)}, eps=1.5),
         "abs": fake_result("abs", "mnist", "l2", bools(5, 8), {"pgd": bools(2, 8)}, eps=1.5, sample_ids=range(4, 12))}
    head = tables.render_table(r).splitlines()[0]
    assert "All L2" in tables.render_table(r)
    assert "n = CNN 10, ABS 8" in head and "different sample sets (6 shared)" in head


def test_format_helpers():
    assert tables.format_pvalue(0.0004) == "<0.001*"
    assert tables.format_pvalue(0.023) == "0.023"
    assert tables.format_pvalue(0.009) == "0.009*"
    assert tables.format_pvalue(float("nan")) == "—"
    assert tables.attack_label("deepfool") == "DeepFool" and tables.attack_label("apgd-ce") == "APGD-CE"


def test_render_pvalues_upper_triangle_and_caption():
    text = tables.render_pvalues(_results())
    assert text.splitlines()[0].startswith("McNemar p-values, All L∞ (exact binomial when discordant < 25) on 100 shared samples")
    rows = [l for l in text.splitlines() if l.startswith("| ") and "---" not in l]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == ["", "Adv-L∞", "E-ABS", "zeta"]
    cnn = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cnn[0] == "CNN" and cnn[1] == "<0.001*"  # 9% vs 57%
    last = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert last[0] == "E-ABS" and last[1:3] == ["", ""]
    assert len(rows) == 4  # header + 3 rows (no row for the last defense)


def test_render_pvalues_single_defense():
    r = {"cnn": _results()["cnn"]}
    assert "nothing to compare" in tables.render_pvalues(r)


def test_render_budget_lists_budget_and_wall_time():
    text = tables.render_budget(_results())
    assert "80 steps x 5 restarts, EOT 1" in text and "1.5 s" in text and "minimization" in text


def test_format_report(tmp_path):
    for data in _results().values():
        write_result(tmp_path, data)
    text = tables.format_report(tmp_path, "fmnist", "linf")
    assert "All L∞" in text and "McNemar" in text and "Attack budgets" in text
    with pytest.raises(BenchUserError, match="no results for fmnist/l2"):
        tables.format_report(tmp_path, "fmnist", "l2")
