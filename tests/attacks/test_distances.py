"""Minimum-distance statistics of minimization attacks (thesis Table 2.6): stats + tables."""

import pytest

from harness import stats
from harness.report import tables
from tests.stats.make_results import fake_result, write_result


def _with_min_norms(data, attack, min_norms):
    for rec, mn in zip(data["records"], min_norms):
        rec["attacks"][attack]["min_norm"] = mn
    return data


def test_distance_summary_prefers_min_norm():
    # norm: the adversarial inside the eps-ball (None beyond eps); min_norm: smallest at any distance
    data = fake_result("cnn", "fmnist", "l2", [True, True, True, False], {"ddn": [False, True, True, False]},
                       eps=1.5, norms={"ddn": [1.0, None, None, 0.0]})
    assert stats.distance_summary(data, "ddn") == (1.0, 1.0)  # old files: "norm"
    _with_min_norms(data, "ddn", [1.0, 2.0, None, 0.0])
    mean, median = stats.distance_summary(data, "ddn")
    assert mean == pytest.approx(1.5) and median == pytest.approx(1.5)  # sample 2 found nothing, 3 not clean
    assert list(stats.adversarial_distances(data, "ddn")) == [1.0, 2.0]


def _results():
    a = fake_result("cnn", "fmnist", "l2", [True, True, True, False], {"pgd": [False, False, True, False], "ddn": [False, True, True, False]},
                    eps=1.5, norms={"ddn": [1.0, None, None, 0.0]})
    _with_min_norms(a, "ddn", [1.0, 2.0, 4.0, 0.0])
    b = fake_result("eabs", "fmnist", "l2", [True, True, False, False], {"pgd": [True, True, False, False], "ddn": [True, True, False, False]},
                    eps=1.5, norms={"ddn": [None, None, 0.0, 0.0]})
    _with_min_norms(b, "ddn", [None, None, 0.0, 0.0])
    return {"cnn": a, "eabs": b}


def test_render_distances_table():
    text = tables.render_distances(_results())
    assert "Table 2.6" in text and "L2" in text
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ") and "Defense" not in ln}
    assert "2.333 / 2.000" in lines["CNN"] and "3/3" in lines["CNN"] and "DDN" in lines["CNN"]
    assert "— / —" in lines["E-ABS"] and "0/2" in lines["E-ABS"]
    assert "PGD" not in text  # bounded attacks have no distance row


def test_format_report_includes_distances_only_with_minimization_attacks(tmp_path):
    for data in _results().values():
        write_result(tmp_path, data)
    assert "Smallest adversarial distance" in tables.format_report(tmp_path, "fmnist", "l2")
    only_bounded = fake_result("cnn", "fmnist", "linf", [True, False], {"pgd": [True, False]})
    write_result(tmp_path, only_bounded)
    report = tables.format_report(tmp_path, "fmnist", "linf")
    assert "Smallest adversarial distance" not in report and "Attack budgets" in report
    assert tables.render_distances({"cnn": only_bounded}) == ""
