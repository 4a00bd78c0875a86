"""Wilson intervals, McNemar tests, per-sample outcomes and pairwise comparisons."""

import math

import numpy as np
import pytest
from make_results import bools, fake_result

from harness import stats
from harness.errors import BenchUserError


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(90, 100), (0, 10), (10, 10), (455, 1000), (1, 3)])
def test_wilson_matches_formula(k, n):
    lo, hi = stats.wilson_interval(k, n)
    elo, ehi = wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-9)
    assert hi == pytest.approx(min(1.0, ehi), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_known_value():
    lo, hi = stats.wilson_interval(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-4)
    assert hi == pytest.approx(0.9448, abs=1e-4)


@pytest.mark.parametrize("k,n", [(0, 0), (5, 4), (-1, 10)])
def test_wilson_rejects_bad_input(k, n):
    with pytest.raises(ValueError):
        stats.wilson_interval(k, n)


def test_mcnemar_exact_one_sided_discordance():
    # b10 = 10 (A right, B wrong), b01 = 0, plus concordant pairs
    a = np.array([True] * 10 + [True] * 5 + [False] * 5)
    b = np.array([False] * 10 + [True] * 5 + [False] * 5)
    res = stats.mcnemar_test(a, b)
    assert (res.b01, res.b10, res.n) == (0, 10, 20)
    assert res.method == "exact"
    assert res.pvalue == pytest.approx(2 * 0.5 ** 10)
    # symmetric in direction
    rev = stats.mcnemar_test(b, a)
    assert (rev.b01, rev.b10) == (10, 0) and rev.pvalue == pytest.approx(res.pvalue)


def test_mcnemar_zero_discordant_is_one():
    a = [True, False, True, True]
    res = stats.mcnemar_test(a, list(a))
    assert res.pvalue == 1.0 and res.method == "exact" and res.b01 == res.b10 == 0


def test_mcnemar_all_true_has_no_empty_column_problem():
    res = stats.mcnemar_test([True] * 5, [True] * 5)
    assert res.pvalue == 1.0 and res.n == 5


def test_mcnemar_large_discordance_uses_chi2():
    a = np.array([True] * 30 + [False] * 10 + [True] * 60)
    b = np.array([False] * 30 + [True] * 10 + [True] * 60)
    res = stats.mcnemar_test(a, b)
    assert (res.b01, res.b10) == (10, 30)
    assert res.method == "chi2"
    expected_stat = (abs(30 - 10) - 1) ** 2 / 40
    assert res.statistic == pytest.approx(expected_stat)
    from scipy.stats import chi2
    assert res.pvalue == pytest.approx(chi2.sf(expected_stat, 1))


def test_mcnemar_threshold_boundary():
    a24 = [True] * 24
    assert stats.mcnemar_test(a24, [False] * 24).method == "exact"
    a25 = [True] * 25
    assert stats.mcnemar_test(a25, [False] * 25).method == "chi2"


def test_mcnemar_rejects_unequal_lengths_and_non_bool():
    with pytest.raises(ValueError):
        stats.mcnemar_test([True, False], [True])
    with pytest.raises(ValueError):
        stats.mcnemar_test([0, 2], [1, 1])
    with pytest.raises(ValueError):
        stats.mcnemar_test([[True]], [[True]])


def test_per_sample_all_is_worst_case():
    clean = [True, True, True, False, True]
    data = fake_result("cnn", "fmnist", "linf", clean,
                       {"pgd": [True, False, True, True, True], "deepfool": [True, True, False, True, True]},
                       sample_ids=[10, 11, 12, 13, 14])
    df = stats.per_sample_outcomes(data)
    assert list(df.columns) == ["clean", "pgd", "deepfool", "all"]
    assert list(df.index) == [10, 11, 12, 13, 14]
    assert df["all"].tolist() == [True, False, False, False, True]
    # clean-incorrect sample is never robust, even if an attack column said so
    assert not df.loc[13, "pgd"]


def test_per_sample_keeps_manifest_attack_order():
    data = fake_result("cnn", "fmnist", "linf", bools(3, 3), {"noise": bools(3, 3), "pgd": bools(1, 3)})
    assert list(stats.per_sample_outcomes(data).columns) == ["clean", "noise", "pgd", "all"]


def test_per_sample_rejects_missing_attack_record():
    data = fake_result("cnn", "fmnist", "linf", bools(3, 3), {"pgd": bools(1, 3)})
    del data["records"][1]["attacks"]["pgd"]
    with pytest.raises(BenchUserError):
        stats.per_sample_outcomes(data)


def test_per_sample_rejects_duplicate_indices():
    data = fake_result("cnn", "fmnist", "linf", bools(3, 3), {"pgd": bools(1, 3)}, sample_ids=[1, 1, 2])
    with pytest.raises(BenchUserError):
        stats.per_sample_outcomes(data)


def test_accuracy_table_counts_and_intervals():
    data = fake_result("cnn", "fmnist", "linf", bools(90, 100), {"pgd": bools(40, 100)})
    t = stats.accuracy_table({"cnn": data})
    assert t["row"].tolist() == ["clean", "pgd", "all"]
    clean = t[t["row"] == "clean"].iloc[0]
    assert (clean["k"], clean["n"], clean["acc"]) == (90, 100, 0.9)
    assert (clean["lo"], clean["hi"]) == pytest.approx(stats.wilson_interval(90, 100))
    assert t[t["row"] == "all"].iloc[0]["k"] == 40


def test_pairwise_uses_intersection_of_sample_ids():
    # A: ids 0..9, all robust; B: ids 5..14, robust only on ids >= 10
    a = fake_result("a", "fmnist", "linf", bools(10, 10), {"pgd": bools(10, 10)}, sample_ids=range(10))
    b = fake_result("b", "fmnist", "linf", bools(10, 10), {"pgd": bools(0, 5) + bools(5, 5)},
                    sample_ids=range(5, 15))
    pv = stats.pairwise_mcnemar({"a": a, "b": b})
    n = pv.attrs["n"]
    assert n.loc["a", "b"] == n.loc["b", "a"] == 5
    # shared ids 5..9: A right, B wrong -> b10 = 5, exact p = 2 * 0.5**5
    assert pv.loc["a", "b"] == pytest.approx(2 * 0.5 ** 5)
    assert pv.loc["b", "a"] == pytest.approx(pv.loc["a", "b"])
    assert math.isnan(pv.loc["a", "a"])
    assert any("5 shared" in note for note in pv.attrs["notes"])
    long = stats.pairwise_mcnemar_long({"a": a, "b": b})
    assert long.iloc[0][["n", "b01", "b10"]].tolist() == [5, 0, 5]


def test_pairwise_empty_intersection_is_nan_with_note():
    a = fake_result("a", "fmnist", "linf", bools(3, 3), {"pgd": bools(3, 3)}, sample_ids=[0, 1, 2])
    b = fake_result("b", "fmnist", "linf", bools(3, 3), {"pgd": bools(0, 3)}, sample_ids=[3, 4, 5])
    pv = stats.pairwise_mcnemar({"a": a, "b": b})
    assert math.isnan(pv.loc["a", "b"])
    assert pv.attrs["n"].loc["a", "b"] == 0
    assert pv.attrs["notes"] == ["a vs b: no shared samples"]


def test_pairwise_on_attack_row_missing_in_one_file():
    a = fake_result("a", "fmnist", "linf", bools(3, 3), {"pgd": bools(3, 3), "cw": bools(1, 3)})
    b = fake_result("b", "fmnist", "linf", bools(3, 3), {"pgd": bools(0, 3)})
    pv = stats.pairwise_mcnemar({"a": a, "b": b}, row="cw")
    assert math.isnan(pv.loc["a", "b"]) and pv.attrs["notes"]


def test_distance_summary_over_found_adversarials_of_clean_correct():
    data = fake_result("cnn", "mnist", "l2", [True, True, True, False], {"ddn": [False, False, True, False]},
                       eps=1.5, norms={"ddn": [1.0, 2.0, None, 0.5]})
    mean, median = stats.distance_summary(data, "ddn")
    assert mean == pytest.approx(1.5) and median == pytest.approx(1.5)
    none = fake_result("cnn", "mnist", "l2", bools(2, 2), {"ddn": bools(2, 2)}, norms={"ddn": [None, None]})
    assert all(math.isnan(x) for x in stats.distance_summary(none, "ddn"))
    with pytest.raises(ValueError):
        stats.distance_summary(data, "pgd")
