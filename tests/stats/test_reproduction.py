"""docs/reproduction.md generation: cell-by-cell comparison with the typed thesis table."""

from pathlib import Path

from harness.report.reproduction import render_reproduction, write_reproduction
from tests.stats.make_results import bools, fake_result, write_result

THESIS = Path(__file__).resolve().parents[2] / "docs" / "thesis_fmnist.toml"


def _write(tmp_path):
    n = 100
    write_result(tmp_path, fake_result("cnn", "fmnist", "linf", bools(91, n), {"pgd": bools(10, n), "deepfool": bools(26, n), "noise": bools(90, n)}))
    write_result(tmp_path, fake_result("adv-linf", "fmnist", "linf", bools(89, n), {"pgd": bools(57, n), "deepfool": bools(65, n), "noise": bools(89, n)}))


def test_cells_show_ours_thesis_and_difference(tmp_path):
    _write(tmp_path)
    text = render_reproduction(tmp_path, THESIS)
    assert "91.0 (" in text and "/ 91.0 / +0.0" in text  # cnn clean: ours 91.0, thesis 91.0
    assert "10.0 (" in text and "/ 9.4 / +0.6" in text  # cnn PGD
    assert "— / 81.6 / not run" in text  # ABS missing
    assert "Ordering by All L∞" in text and "same" in text
    assert "pairs agree with the thesis" in text
    assert "not run" in text.split("## L2")[1]  # no L2 results at all
    # cnn 91/10/26/90 (thesis 91.0/9.4/25.9/90.5, All 10 vs 9.4); adv-linf 89/57/65/89 (88.9/57.0/64.9/88.9, All 57 vs 57.0)
    assert "Within 5 points of the thesis: 10 of 10 measured cells (CNN 5/5; Adv-L∞ 5/5)." in text.split("## L2")[0]
    assert "Within 5 points of the thesis: no measured cells." in text.split("## L2")[1]


def test_write_is_deterministic(tmp_path):
    _write(tmp_path)
    out = tmp_path / "docs" / "reproduction.md"
    assert write_reproduction(tmp_path, THESIS, out) is True
    assert write_reproduction(tmp_path, THESIS, out) is False


def test_cells_far_from_the_thesis_are_explained_from_measurements(tmp_path):
    n = 400
    # adv-linf: clean 80 (thesis 88.9) and PGD 48 (thesis 57.0): the PGD gap follows the clean gap;
    # DeepFool 50 (thesis 64.9): 15 points beyond it. Noise 80 (thesis 88.9) follows the clean gap.
    data = fake_result("adv-linf", "fmnist", "linf", bools(320, n), {"pgd": bools(192, n), "deepfool": bools(200, n), "noise": bools(320, n)})
    data["manifest"]["checkpoint_epochs"] = 10
    data["manifest"]["budget_check"] = {"n": 100, "attacks": {"deepfool": {"delta": 0.03}}}
    write_result(tmp_path, data)
    write_result(tmp_path, fake_result("cnn", "fmnist", "linf", bools(364, n), {"pgd": bools(38, n), "deepfool": bools(104, n), "noise": bools(362, n)}))
    text = render_reproduction(tmp_path, THESIS).split("## L2")[0]
    far = [line for line in text.splitlines() if line.startswith("- Adv-L∞ / ")]
    clean = next(line for line in far if line.startswith("- Adv-L∞ / Clean (-8.9): "))
    assert "checkpoint trained 10 epochs" in clean
    # the fake file's checkpoint hash is not the shipped adv-linf checkpoint's: the row is flagged as stale
    assert "this row evaluated an older checkpoint than the one found today (now " in clean
    assert "older (now " in text
    pgd = next(line for line in far if "/ PGD" in line)
    assert "follows the clean-accuracy gap (-8.9 points" in pgd and "80 steps x 5 restarts" in pgd
    deepfool = next(line for line in far if "/ DeepFool" in line)
    assert "beyond the clean gap (-8.9)" in deepfool and "(6.0 more)" in deepfool and "change it by -3.0 points" in deepfool
    assert not any(line.startswith("- CNN / ") for line in text.splitlines())  # every CNN cell within 5 points


def test_a_partially_merged_row_shows_its_pending_attacks(tmp_path):
    """A `bench sweep --merge-partial` file: its unfinished attacks read "pending", not "not run",
    and a far All cell says the pending attacks can still lower it."""
    n = 100
    data = fake_result("adv-linf", "fmnist", "linf", bools(89, n), {"pgd": bools(20, n)})
    data["manifest"]["pending_attacks"] = {"deepfool": "3/8 shards", "noise": "0/8 shards"}
    write_result(tmp_path, data)
    text = render_reproduction(tmp_path, THESIS).split("## L2")[0]
    assert "— / 64.9 / pending (3/8 shards)" in text and "— / 88.9 / pending (0/8 shards)" in text
    assert "deepfool: pending (3/8 shards; sweep in progress)" in text
    all_line = next(line for line in text.splitlines() if line.startswith("- Adv-L∞ / All"))
    assert "incomplete row: DeepFool (3/8 shards), Noise (0/8 shards) still pending" in all_line
    # its All (20 of 100) is only an upper bound: shown as one, and not counted as a measured cell
    assert "| ≤ 20.0 / 57.0 / pending (2 attacks) |" in text
    assert "Within 5 points of the thesis: 1 of 2 measured cells (Adv-L∞ 1/2)." in text


def test_an_incomplete_rows_all_is_an_upper_bound_left_out_of_counts_ordering_and_significance(tmp_path):
    """A partial merge whose finished attacks leave an All close to the thesis's must not read as a
    reproduced cell: the pending attacks can still lower it by any amount."""
    n = 100
    write_result(tmp_path, fake_result("cnn", "fmnist", "linf", bools(91, n), {"pgd": bools(10, n), "deepfool": bools(26, n), "noise": bools(90, n)}))
    data = fake_result("adv-linf", "fmnist", "linf", bools(89, n), {"deepfool": bools(60, n), "noise": bools(88, n)})
    data["manifest"]["pending_attacks"] = {"pgd": "1/8 shards"}
    write_result(tmp_path, data)
    text = render_reproduction(tmp_path, THESIS).split("## L2")[0]
    assert "| ≤ 60.0 / 57.0 / pending (1 attack) |" in text
    assert not any(line.startswith("- Adv-L∞ / All") for line in text.splitlines())  # above the thesis: no conclusion yet
    # cnn 5 of 5; adv-linf clean 89 vs 88.9, DeepFool 60 vs 64.9, noise 88 vs 88.9 (All not counted)
    assert "Within 5 points of the thesis: 8 of 8 measured cells (CNN 5/5; Adv-L∞ 3/3)." in text
    assert "Left out of the ordering and significance: Adv-L∞ (incomplete row" in text
    assert "Not enough defenses evaluated for the qualitative checks." in text
    assert "pairs agree with the thesis" not in text


def test_a_far_all_cell_is_split_into_the_thesis_attacks_and_ours(tmp_path):
    """Our All takes the worst case over attacks the thesis did not run; the explanation measures the
    All over the thesis's own attacks from the per-sample records and counts what the others add."""
    n = 100
    # adv-l2, thesis All L∞ 55.7: PGD leaves the first 56, DeepFool 60, noise 80; AutoAttack (not in the
    # thesis) the first 40, so All = 40 (-15.7) and over the thesis's attacks 56 (+0.3); AutoAttack
    # breaks samples 40-55 (16) of those, Square (samples 0-69 robust) none of them.
    attacks = {"pgd": bools(56, n), "deepfool": bools(60, n), "noise": bools(80, n), "autoattack": bools(40, n), "square": bools(70, n)}
    write_result(tmp_path, fake_result("adv-l2", "fmnist", "linf", bools(87, n), attacks))
    text = render_reproduction(tmp_path, THESIS).split("## L2")[0]
    all_line = next(line for line in text.splitlines() if line.startswith("- Adv-L2 / All (-15.7)"))
    assert "over the thesis's own attacks (PGD, DeepFool, Noise) our All is 56.0 (+0.3 from the thesis)" in all_line
    assert "AutoAttack breaks 16" in all_line and "Square" not in all_line.split("survive those")[1]


def test_a_budget_check_still_in_its_first_restart_reports_only_the_samples_it_attacked(tmp_path):
    """A partial check entry counts the samples its first restart has not reached as standing: its
    own figures read as the doubled budget *raising* accuracy (here 20% -> 74%). The cell's note
    gives the figures of the blocks it finished instead."""
    n = 400
    data = fake_result("adv-linf", "fmnist", "linf", bools(320, n), {"pgd": bools(10, n), "deepfool": bools(200, n), "noise": bools(320, n)})
    ids = [r["index"] for r in data["records"]]
    # PGD-80 leaves the first 10 robust; restart 1 of the doubled PGD attacked 2 blocks of 10 and broke 3 of those 10
    standing = ids[3:10] + ids[20:50]
    data["manifest"]["budget_check"] = {"n": 50, "attacks": {"pgd": {
        "acc": 0.2, "acc_doubled": 0.74, "delta": -0.54, "restarts": 5,
        "restarts_done": 0, "blocks_done": 2, "block_size": 10, "robust_doubled": standing}}}
    write_result(tmp_path, data)
    text = render_reproduction(tmp_path, THESIS).split("## L2")[0]
    pgd = next(line for line in text.splitlines() if line.startswith("- Adv-L∞ / PGD"))
    assert "budget check in progress: 2x steps, restart 1 of 5 on 20 of the first 50 samples so far, 50.0 -> 35.0 on those counting both budgets (-15.0 points" in pgd
    assert "+54.0" not in pgd and "change it by" not in pgd


def test_a_budget_check_counts_its_new_breaks_even_where_the_doubled_run_alone_misses_the_suites(tmp_path):
    """A randomized defense: on the 20 samples it attacked so far, the doubled run alone leaves as
    many robust as the suite's (7), but 2 of its 7 are samples the suite broke and it broke 2 the
    suite left robust. The note reports 35.0 -> 25.0 counting both, not "+0.0"; a finished check
    is reported the same way."""
    n = 400
    data = fake_result("adv-linf", "fmnist", "linf", bools(320, n), {"pgd": bools(7, n), "deepfool": bools(200, n), "noise": bools(320, n)})
    ids = [r["index"] for r in data["records"]]
    standing = ids[2:7] + ids[10:12] + ids[20:50]  # the suite's robust: ids[0:7]; broken now: ids[0:2]; ids[10:12] missed
    data["manifest"]["budget_check"] = {"n": 50, "attacks": {"pgd": {
        "acc": 0.14, "acc_doubled": 0.74, "delta": -0.6, "restarts": 5,
        "restarts_done": 0, "blocks_done": 2, "block_size": 10, "robust_doubled": standing, "found_more": ids[0:2]}}}
    write_result(tmp_path, data)
    pgd = next(line for line in render_reproduction(tmp_path, THESIS).splitlines() if line.startswith("- Adv-L∞ / PGD"))
    assert "on 20 of the first 50 samples so far, 35.0 -> 25.0 on those counting both budgets (-10.0 points" in pgd
    assert "the doubled run alone leaves 35.0" in pgd
    data["manifest"]["budget_check"]["attacks"]["pgd"] = {"acc": 0.14, "acc_doubled": 0.14, "delta": 0.0, "restarts": 5, "found_more": ids[0:2]}
    write_result(tmp_path, data)
    pgd = next(line for line in render_reproduction(tmp_path, THESIS).splitlines() if line.startswith("- Adv-L∞ / PGD"))
    assert "change it by -4.0 points on the first 50 samples, counting a sample robust only if neither budget broke it" in pgd


def test_the_all_cell_reports_the_budget_check_of_the_worst_case(tmp_path):
    """The verdict of a row rests on how far its worst case falls with the doubled budgets: the All
    cell's note says it, as a bound while an attack's check is unfinished, and whether it passes the
    threshold."""
    n = 200
    attacks = {"pgd": bools(56, n), "deepfool": bools(60, n), "noise": bools(80, n)}
    data = fake_result("adv-l2", "fmnist", "linf", bools(87, n), attacks)
    data["manifest"]["budget_check"] = {"n": 50, "threshold": 0.02, "all": {"acc": 0.5, "acc_doubled": 0.44, "delta": 0.06}, "attacks": {
        "pgd": {"acc": 0.5, "acc_doubled": 0.44, "delta": 0.06, "restarts": 5, "restarts_done": 1, "found_more": [1, 2, 3]},
        "deepfool": {"acc": 0.5, "acc_doubled": 0.5, "delta": 0.0, "restarts": 5}}}
    write_result(tmp_path, data)
    line = next(x for x in render_reproduction(tmp_path, THESIS).split("## L2")[0].splitlines() if x.startswith("- Adv-L2 / All"))
    assert ("budget check of the worst case: the doubled attacks lower it by at least 6.0 points on the first 50 samples, counting a sample robust only if "
            "neither budget broke it (more than the threshold: the row over-reports robustness; PGD unfinished, which can only lower it further)") in line, line
    pgd = next((x for x in render_reproduction(tmp_path, THESIS).split("## L2")[0].splitlines() if x.startswith("- Adv-L2 / PGD")), None)
    assert pgd is not None, "the test needs the PGD cell more than 5 points from the thesis"
    assert ("budget check: 2x steps and 5 restarts change it by at least -6.0 points on the first 50 samples, counting a sample robust only if "
            "neither budget broke it (check unfinished: 1 of 5 restarts done; further blocks can only lower it)") in pgd, pgd
    data["manifest"]["budget_check"]["all"]["delta"] = 0.02
    del data["manifest"]["budget_check"]["attacks"]["pgd"]["restarts_done"]
    write_result(tmp_path, data)
    line = next(x for x in render_reproduction(tmp_path, THESIS).split("## L2")[0].splitlines() if x.startswith("- Adv-L2 / All"))
    assert "the doubled attacks lower it by 2.0 points on the first 50 samples, counting a sample robust only if neither budget broke it (within the threshold)" in line, line


def test_a_cell_whose_planned_budget_check_has_not_run_says_so(tmp_path):
    """A sweep plan's check recorded in the file (``budget_check_planned``) but not run yet: the far
    cells of the checked attacks, and All, say the check is pending instead of nothing."""
    n = 100
    data = fake_result("adv-linf", "fmnist", "linf", bools(89, n), {"pgd": bools(20, n), "deepfool": bools(64, n), "noise": bools(88, n)})
    data["manifest"]["budget_check_planned"] = {"n": 50, "attacks": ["pgd"]}
    data["manifest"]["attacks"]["pgd"]["spec"] = {"name": "pgd", "params": {"steps": 80}, "restarts": 5}  # a step budget the check doubles
    write_result(tmp_path, data)
    text = render_reproduction(tmp_path, THESIS).split("## L2")[0]
    pgd = next(line for line in text.splitlines() if line.startswith("- Adv-L∞ / PGD"))
    assert "budget check pending: the sweep plan's check (2x steps, 5 restarts, first 50 samples) has not run yet" in pgd
    all_line = next(line for line in text.splitlines() if line.startswith("- Adv-L∞ / All"))
    assert "budget check of PGD pending" in all_line
    data["manifest"]["budget_check_planned"] = {"n": 50, "attacks": ["deepfool"]}  # a check of an attack without a step budget: nothing to wait for
    write_result(tmp_path, data)
    assert "budget check" not in render_reproduction(tmp_path, THESIS)


def test_the_all_cell_calls_a_started_check_unfinished_not_pending(tmp_path):
    """Stop 65: with the C&W check two blocks into restart 1 and no worst-case figure yet, the All
    cell said the check "has not run yet". A started check is unfinished (how far it got); an
    attack whose check has not started is still pending."""
    from harness.engine.saturation import FACTOR, RESTARTS, _doubled_of

    n = 100
    data = fake_result("adv-linf", "fmnist", "linf", bools(89, n), {"pgd": bools(20, n), "deepfool": bools(64, n), "noise": bools(88, n)})
    data["manifest"]["budget_check_planned"] = {"n": 50, "attacks": ["pgd", "deepfool"]}
    for name in ("pgd", "deepfool"):  # both with a step budget the check doubles
        data["manifest"]["attacks"][name].update(spec={"name": name, "params": {"steps": 80}, "restarts": 1}, eps=0.1)
    h2 = _doubled_of(data["manifest"]["attacks"]["pgd"])[1]
    assert h2 is not None
    data["manifest"]["budget_check"] = {"n": 50, "factor": FACTOR, "restarts": RESTARTS, "attacks": {"pgd": {
        "of": "h-pgd", "spec_hash": h2, "acc": 0.2, "acc_doubled": 0.2, "delta": 0.0, "restarts": RESTARTS,
        "restarts_done": 0, "blocks_done": 2, "block_size": 10, "robust_doubled": []}}}
    write_result(tmp_path, data)
    all_line = next(line for line in render_reproduction(tmp_path, THESIS).split("## L2")[0].splitlines() if line.startswith("- Adv-L∞ / All"))
    assert "budget check of PGD (2 blocks of restart 1 of 5 done) unfinished: its further blocks can only lower All" in all_line, all_line
    assert "budget check of DeepFool pending: the sweep plan's check (2x steps, 5 restarts, first 50 samples) has not run yet" in all_line, all_line
    assert "PGD pending" not in all_line and "of PGD, DeepFool pending" not in all_line


def test_a_note_bound_to_a_checkpoint_is_shown_as_another_models_on_a_row_of_another_checkpoint(tmp_path):
    """A reference note that cites a row's measurements names its checkpoint; under a row evaluated on
    another checkpoint (a retrained model) it reads as that other model's, not as this row's explanation."""
    import pytest

    from harness.errors import BenchUserError

    n = 100
    data = fake_result("cnn", "fmnist", "linf", bools(91, n), {"pgd": bools(10, n), "deepfool": bools(10, n), "noise": bools(90, n)})
    sha = data["manifest"]["checkpoint_sha256"]
    write_result(tmp_path, data)
    ref = THESIS.read_text(encoding="utf-8")
    note = '"cnn/deepfool" = { checkpoint = "%s", text = "DeepFool leaves 10 of 100" }'
    bound = tmp_path / "ref.toml"

    def deepfool_line(checkpoint: str) -> str:
        lines = [ln for ln in ref.splitlines() if not ln.startswith('"cnn/deepfool"')]
        at = lines.index("[linf.notes]") + 1
        bound.write_text("\n".join(lines[:at] + [note % checkpoint] + lines[at:]), encoding="utf-8")
        text = render_reproduction(tmp_path, bound).split("## L2")[0]
        return next(line for line in text.splitlines() if line.startswith("- CNN / DeepFool"))

    same = deepfool_line(sha[:8])
    assert same.endswith("; DeepFool leaves 10 of 100.") and "measured on checkpoint" not in same
    other = deepfool_line("0123abcd")
    assert f"measured on checkpoint 0123abcd, not this row's {sha[:8]} (not yet redone on it): DeepFool leaves 10 of 100" in other
    # a plain string applies to any checkpoint; a malformed table is a user error even where its cell is close
    lines = [ln for ln in ref.splitlines() if not ln.startswith('"cnn/deepfool"')]
    at = lines.index("[linf.notes]") + 1
    bound.write_text("\n".join(lines[:at] + ['"cnn/pgd" = { text = "no checkpoint" }'] + lines[at:]), encoding="utf-8")
    with pytest.raises(BenchUserError, match=r"reference note '\[linf.notes\] cnn/pgd'"):
        render_reproduction(tmp_path, bound)
