"""Budget saturation check (`bench run --check-budget`, harness/engine/saturation.py)."""

from __future__ import annotations

import json

import pytest
import torch

from harness.engine.models import train_defense
from harness.store.results import load_result, load_results
from harness.engine.runner import RunConfig, evaluate
from harness.engine.sanity import verdict
from harness.engine.saturation import RESTARTS, stronger, worst_case
from harness.report.tables import UNSATURATED, format_report, render_saturation, render_table
from tests.conftest import run_bench
from threat_models import AttackSpec

# PGD with 2 steps travels 0.8 eps, short of most samples' boundary: doubling its steps (and 5 restarts)
# finds adversarials it missed, so this budget is not saturated. Noise is no gradient attack and
# DeepFool at 30 steps has converged on the tiny CNN: both negative controls.
SUITE = """
description = "budget-check test suite"
masking_checks = false

[[attack]]
name = "pgd"
params = { steps = 2, rel_stepsize = 0.4, random_start = false }

[[attack]]
name = "deepfool"
params = { steps = 30, candidates = 10, overshoot = 0.02 }

[[attack]]
name = "noise"
params = { repeats = 3 }
"""


def test_stronger_doubles_steps_of_gradient_attacks_only():
    s = stronger(AttackSpec("pgd", (("steps", 40), ("rel_stepsize", 0.1)), restarts=1, eot=3))
    assert s.kwargs == {"steps": 80, "rel_stepsize": 0.1} and s.restarts == RESTARTS and s.eot == 3
    assert stronger(AttackSpec("pgd", (("steps", 40),), restarts=20)).restarts == 20  # never fewer restarts
    for name, params in [("noise", {"repeats": 5}), ("square", {"n_queries": 10}), ("transfer", {"steps": 10}), ("autoattack", {})]:
        assert stronger(AttackSpec(name, tuple(params.items()))) is None, name


def test_worst_case_counts_samples_only_the_doubled_budget_broke():
    recs = [{"index": i, "clean_correct": True, "attacks": {"pgd": {"correct": True}, "noise": {"correct": i != 0}}} for i in range(4)]
    out = worst_case(recs, {"pgd": {}, "noise": {}}, {"pgd": {"found_more": [1, 2]}})
    assert out == {"acc": 0.75, "acc_doubled": 0.25, "delta": 0.5}


@pytest.fixture
def trained(bench_env):
    train_defense("cnn", "fmnist", device=torch.device("cpu"), epochs=4, config_overrides={"batch_size": 64}, progress=False, announce=lambda *_: None)
    (bench_env / "suite.toml").write_text(SUITE, encoding="utf-8")
    return bench_env


def test_unsaturated_budget_is_recorded_marked_and_resumed(trained):
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=60, eps=0.25,
                    results_dir=str(trained / "results"), progress=False, train_if_missing=False, check_budget=40)
    path = evaluate(cfg, log=lambda *_: None)
    data = load_result(path)
    check = data["manifest"]["budget_check"]
    assert check["n"] == 40 and check["factor"] == 2 and check["restarts"] == 5
    assert set(check["attacks"]) == {"pgd", "deepfool"} and check["not_checked"] == ["noise"]
    pgd = check["attacks"]["pgd"]
    assert pgd["budget_doubled"].startswith("4 steps x 5 restarts")
    head = data["records"][:40]
    assert pgd["acc"] == sum(r["attacks"]["pgd"]["correct"] for r in head) / 40  # the suite's own records
    assert pgd["delta"] > 0.02 and not pgd["saturated"] and pgd["found_more"]
    assert all(r["attacks"]["pgd"]["correct"] for r in head if r["index"] in pgd["found_more"])
    assert check["all"]["acc_doubled"] <= check["all"]["acc"]
    # reported: the table marks PGD, the warnings and the report say so
    table = render_table(load_results(trained / "results", "fmnist", "linf"))
    pgd_row = next(line for line in table.splitlines() if line.startswith("| PGD"))
    assert UNSATURATED in pgd_row and "budget not saturated" in table
    assert "Budget saturation check" in format_report(trained / "results", "fmnist", "linf")
    v = verdict(data)
    assert any("pgd: budget not saturated" in w for w in v.warnings)
    if check["all"]["delta"] > 0.02:
        assert "budget not saturated" in v.reasons
    # a second run keeps the finished check (same specs), and does not touch the records
    before = json.dumps(data["manifest"]["budget_check"], sort_keys=True)
    data2 = load_result(evaluate(cfg, log=lambda *_: None))
    assert json.dumps(data2["manifest"]["budget_check"], sort_keys=True) == before
    assert data2["records"] == data["records"]


def test_check_budget_flag_on_the_cli(trained):
    r = run_bench("run", "--defense", "cnn", "--norm", "linf", "--n", "20", "--eps", "0.25", "--suite", str(trained / "suite.toml"),
                  "--attacks", "deepfool", "--check-budget", "--results-dir", str(trained / "cli"), "--quiet", "--no-train")
    assert r.returncode == 0, r.stderr
    check = load_result(trained / "cli" / "fmnist" / "linf" / "cnn.json")["manifest"]["budget_check"]
    assert check["n"] == 20 and list(check["attacks"]) == ["deepfool"]  # --check-budget alone: up to 100 samples
    assert "Budget saturation check" in r.stdout
    bad = run_bench("run", "--defense", "cnn", "--norm", "linf", "--check-budget", "0", "--results-dir", str(trained / "cli"), "--no-train")
    assert bad.returncode == 2 and "positive integer" in bad.stderr


def _restart_of(job_hash: str) -> str:
    """"restartK" of a check job's hash ("<spec>:restartK", or "<spec>:restartK:blockB" for a packed block)."""
    return next(t for t in job_hash.split(":") if t.startswith("restart"))


def _spy_restarts(monkeypatch, outcome) -> dict:
    """Wrap the runner's ``attack`` for a check: returns restart number -> the samples its blocks
    attacked (clean-correct in the records passed), filled as the check runs; ``outcome(k, index,
    clean_record, outcome)`` replaces each verified outcome of restart ``k`` (seed probes are left as they are)."""
    import dataclasses

    import harness.engine.runner as runner

    real, attacked = runner.attack, {}

    def spy(c, job, clean, start=0):
        run = real(c, job, clean, start)
        if "seed probe" in job.key:
            return run
        k = int(_restart_of(job.hash)[len("restart"):])
        ids = [c.ids[start + j] for j in range(len(clean))]
        attacked.setdefault(k, set()).update(i for i, r in zip(ids, clean) if r["clean_correct"])
        return dataclasses.replace(run, outcomes=[outcome(k, i, r, o) for i, r, o in zip(ids, clean, run.outcomes)])

    monkeypatch.setattr(runner, "attack", spy)
    return attacked


def test_an_interrupted_check_resumes_at_its_next_restart_and_ends_as_an_uninterrupted_one(trained, monkeypatch):
    import harness.engine.runner as runner

    def cfg(results: str, check: int | None) -> RunConfig:
        return RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=40, eps=0.25, attacks=("pgd",),
                         results_dir=str(trained / results), progress=False, train_if_missing=False, check_budget=check)

    # PGD with a random start: each restart draws its own, so all five run
    (trained / "suite.toml").write_text(SUITE.replace("random_start = false", "random_start = true"), encoding="utf-8")
    evaluate(cfg("cut", None), log=lambda *_: None)  # the suite's attacks, no check yet
    real, calls = runner.attack, []

    probes = []

    def killed_after_two_restarts(ctx, job, clean, start=0):
        if job.key.endswith("seed probe"):
            probes.append(job.hash)
            return real(ctx, job, clean, start)
        if _restart_of(job.hash) not in calls and len(set(calls)) == 2:
            raise KeyboardInterrupt  # the session ends during the third restart
        calls.append(_restart_of(job.hash))  # one call per block of the check
        return real(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", killed_after_two_restarts)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg("cut", 40), log=lambda *_: None)
    part = load_result(trained / "cut" / "fmnist" / "linf" / "cnn.json")["manifest"]["budget_check"]["attacks"]["pgd"]
    assert part["restarts_done"] == 2 and part["restarts"] == RESTARTS and len(set(calls)) == 2
    # a random start: the seed probes before restarts 2 and 3 saw two seeds propose different candidates
    assert [_restart_of(h) for h in probes] == ["restart0", "restart1", "restart1", "restart2"]
    assert part["saturated"] in (None, False) and part["acc_doubled"] == len(part["robust_doubled"]) / 40
    assert "2 of 5 restarts so far" in render_saturation(load_results(trained / "cut", "fmnist", "linf"))

    calls.clear()
    def count(ctx, job, clean, start=0):
        if not job.key.endswith("seed probe"):
            calls.append(job.hash)
        return real(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", count)
    done = load_result(evaluate(cfg("cut", 40), log=lambda *_: None))["manifest"]["budget_check"]["attacks"]["pgd"]
    ran = list(dict.fromkeys(_restart_of(h) for h in calls))
    assert ran and ran == ["restart2", "restart3", "restart4"][: len(ran)]  # only the restarts not yet run
    if len(ran) < 3:  # ends early only when every sample the suite left robust is broken
        assert done["stopped"] == "all broken" and done["acc_both"] == 0 and done["restarts_run"] == 2 + len(ran)
    assert "restarts_done" not in done and "robust_doubled" not in done and isinstance(done["saturated"], bool)
    whole = load_result(evaluate(cfg("whole", 40), log=lambda *_: None))["manifest"]["budget_check"]["attacks"]["pgd"]
    assert (done["acc_doubled"], done["found_more"]) == (whole["acc_doubled"], whole["found_more"])


def test_a_deterministic_attack_on_a_deterministic_defense_stops_when_two_restarts_repeat(trained, monkeypatch):
    import harness.engine.runner as runner

    real, calls = runner.attack, []
    monkeypatch.setattr(runner, "attack", lambda ctx, job, clean, start=0: calls.append(job.key) or real(ctx, job, clean, start))
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=30, eps=0.25, attacks=("deepfool", "pgd"),
                    results_dir=str(trained / "det"), progress=False, train_if_missing=False, check_budget=30)
    check = load_result(evaluate(cfg, log=lambda *_: None))["manifest"]["budget_check"]["attacks"]
    # PGD without a random start draws no randomness: before restart 2 the seed probe runs restart 1's
    # seed and restart 2's on two samples still standing, they propose the same candidates, and the
    # check ends after one restart. DeepFool at eps 0.25 breaks every sample in its first restart:
    # nothing is left to attack (no probe)
    # (30 samples: the check's 3 blocks of 10, one call each; a probe is one call)
    assert [k for k in calls if " check " in k] == ["pgd check 1/5"] * 3 + ["pgd check 2/5 seed probe"] * 2 + ["deepfool check 1/5"] * 3
    assert check["pgd"]["restarts_run"] == 1 and check["pgd"]["stopped"] == "deterministic" and "identical candidates" in check["pgd"]["note"]
    standing = round(check["pgd"]["acc_doubled"] * 30)
    assert standing >= 1 and f"a probe on {min(2, standing)} sample(s)" in check["pgd"]["note"]
    assert check["deepfool"]["restarts_run"] == 1 and check["deepfool"]["stopped"] == "all broken" and check["deepfool"]["acc_doubled"] == 0
    for key in ("pgd", "deepfool"):
        assert isinstance(check[key]["saturated"], bool) and "restarts_done" not in check[key]
    table = render_saturation(load_results(trained / "det", "fmnist", "linf"))
    assert "deterministic: stopped after 1 restart(s), a further seed proposed the same candidates" in table and "every sample the suite left robust broken after 1 restarts" in table


def test_candidates_digest_tells_identical_runs_from_different_ones(trained):
    from harness.engine.runner import AttackJob, attack, clean_pass, prepare

    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=20, eps=0.25,
                    results_dir=str(trained / "dig"), progress=False, train_if_missing=False)
    ctx = prepare(cfg, log=lambda *_: None)
    clean = clean_pass(ctx).records
    pgd = next(j for j in ctx.jobs if j.key == "pgd")
    rand = AttackSpec("pgd", tuple(dict(pgd.spec.kwargs, random_start=True).items()))
    runs = [attack(ctx, AttackJob("pgd", spec, pgd.threat, h), clean) for spec, h in [(pgd.spec, "a"), (pgd.spec, "b"), (rand, "a"), (rand, "b")]]
    assert runs[0].candidates_sha256 == runs[1].candidates_sha256  # no random start: seeds do not matter
    assert runs[2].candidates_sha256 != runs[3].candidates_sha256  # random starts from two seeds


def test_a_resumed_file_keeps_the_commands_that_wrote_its_earlier_attacks(trained):
    from harness.store.results import write_result

    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=20, eps=0.25, attacks=("deepfool",),
                    results_dir=str(trained / "prov"), progress=False, train_if_missing=False)
    path = evaluate(cfg, log=lambda *_: None)
    data = load_result(path)
    here = data["manifest"]["device"]
    data["manifest"]["command"] = "bench sweep plans/x.toml --results-dir results"  # as a sweep merge writes it
    data["manifest"]["device"] = f"{here} + cuda:NVIDIA H200"  # shards written on two machines
    ours = data["manifest"]["versions"]
    gpu = {"python": "3.12.3", "torch": "2.11.0"}  # a lent GPU machine's own torch
    data["manifest"]["versions"] = gpu
    write_result(path, data)
    man = load_result(evaluate(RunConfig(**{**cfg.__dict__, "check_budget": 20}), log=lambda *_: None))["manifest"]
    assert man["earlier_commands"] == ["bench sweep plans/x.toml --results-dir results"] and man["command"] != man["earlier_commands"][0]
    assert man["device"] == f"{here} + cuda:NVIDIA H200"  # the check ran here: every device that wrote the file stays named
    assert man["versions"] == ours and man["earlier_versions"] == [gpu]  # ... and every set of package versions
    assert "deepfool" in man["budget_check"]["attacks"]


def test_a_rerun_with_nothing_left_to_do_leaves_the_file_untouched(trained, monkeypatch):
    import harness.engine.runner as runner

    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=20, eps=0.25, attacks=("deepfool",),
                    results_dir=str(trained / "noop"), progress=False, train_if_missing=False, check_budget=10)
    path = evaluate(cfg, log=lambda *_: None)
    before = path.read_bytes()
    assert "deepfool" in load_result(path)["manifest"]["budget_check"]["attacks"]
    monkeypatch.setattr(runner, "command_line", lambda: "bench run again")
    lines = []
    assert evaluate(cfg, log=lines.append) == path
    assert path.read_bytes() == before  # neither the command nor the date of the rerun is written
    assert any("up to date, left unchanged" in str(line) for line in lines)
    # a rerun that adds an attack writes the file, with its own command on record
    evaluate(RunConfig(**{**cfg.__dict__, "attacks": ("deepfool", "noise")}), log=lambda *_: None)
    man = load_result(path)["manifest"]
    assert "noise" in man["attacks"] and man["command"] == "bench run again" and man["earlier_commands"]


def test_later_restarts_attack_only_the_samples_still_standing_and_resume_block_by_block(trained, monkeypatch):
    import harness.engine.runner as runner
    from harness.engine.saturation import pack

    def cfg(results: str, check: int | None) -> RunConfig:
        return RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=40, eps=0.25, attacks=("pgd",), batch_size=4,
                         results_dir=str(trained / results), progress=False, train_if_missing=False, check_budget=check)

    # PGD-1 doubled to PGD-2: more than 6 of the 40 survive restart 1, so restart 2 packs them into two or more blocks
    (trained / "suite.toml").write_text(SUITE.replace("steps = 2,", "steps = 1,").replace("random_start = false", "random_start = true"), encoding="utf-8")
    real, calls = runner.attack, []

    def spy(ctx, job, clean, start=0):
        if job.key.endswith("seed probe"):  # random starts: the probes before restarts 2-5 never stop the check
            return real(ctx, job, clean, start)
        restart = _restart_of(job.hash) if ":restart" in job.hash else "suite"
        calls.append((restart, job.hash.rsplit(":", 1)[-1], start, ctx.cfg.batch_size, {r["index"] for r in clean if r["clean_correct"]}))
        return real(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", spy)
    whole = load_result(evaluate(cfg("whole", 40), log=lambda *_: None))
    check = whole["manifest"]["budget_check"]["attacks"]["pgd"]
    first_calls = [c for c in calls if c[0] == "restart0"]
    assert [c[2] for c in first_calls] == list(range(0, 40, 4))  # restart 1: one call per position block of 4
    first = set().union(*(c[4] for c in first_calls))
    assert first == {r["index"] for r in whole["records"][:40] if r["clean_correct"]}  # restart 1: every clean-correct sample
    second_calls = [c for c in calls if c[0] == "restart1"]
    second = set().union(*(c[4] for c in second_calls))
    broken_by_first = first - second
    assert broken_by_first and second < first  # restart 2 skips what restart 1 broke
    assert check["acc_doubled"] <= len(second) / 40  # what restart 2 started from bounds what is left
    # restart 2 packs its samples into balanced blocks of at most 6, each one batch with its own seed
    assert [len(c[4]) for c in second_calls] == pack(len(second), 4) and all(c[3] == len(c[4]) and c[2] == 0 for c in second_calls)
    assert [c[1] for c in second_calls] == [f"block{i}" for i in range(len(second_calls))]

    # killed inside restart 2 after the first of its packed blocks: resumes at its second block
    assert len(second_calls) >= 2, "restart 2 needs two packed blocks for this test"
    calls.clear()
    evaluate(cfg("cut", None), log=lambda *_: None)

    def killed(ctx, job, clean, start=0):
        if job.hash.endswith("restart1:block1"):
            raise KeyboardInterrupt
        return spy(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg("cut", 40), log=lambda *_: None)
    part = load_result(trained / "cut" / "fmnist" / "linf" / "cnn.json")["manifest"]["budget_check"]["attacks"]["pgd"]
    assert part["restarts_done"] == 1 and part["blocks_done"] == 1 and len(part["block_sha256"]) == 1 and set(part["pool"]) == second
    assert part["pool_blocks"] == pack(len(second), 4)
    from harness.engine.saturation import next_block_s, pending

    cut = load_result(trained / "cut" / "fmnist" / "linf" / "cnn.json")
    assert next_block_s(cut, "pgd", pending(cut, 40)["pgd"], n=40) == pytest.approx(part["sample_s"] * part["pool_blocks"][1])
    assert "1 of 5 restarts so far, part of the next" in render_saturation(load_results(trained / "cut", "fmnist", "linf"))
    calls.clear()
    monkeypatch.setattr(runner, "attack", spy)
    done = load_result(evaluate(cfg("cut", 40), log=lambda *_: None))["manifest"]["budget_check"]["attacks"]["pgd"]
    assert [(c[0], c[1]) for c in calls][:1] == [("restart1", "block1")]  # the block not yet run
    assert "blocks_done" not in done and "restarts_done" not in done and "pool_blocks" not in done
    assert (done["acc_doubled"], done["found_more"], done["saturated"]) == (check["acc_doubled"], check["found_more"], check["saturated"])


@pytest.mark.parametrize(("count", "bs", "sizes"), [(0, 10, []), (3, 10, [3]), (13, 10, [13]), (15, 10, [15]), (16, 10, [8, 8]),
                                                     (31, 10, [11, 10, 10]), (5, 1, [1] * 5), (7, 4, [4, 3])])
def test_packed_blocks_are_the_fewest_of_at_most_one_and_a_half_batches(count, bs, sizes):
    from harness.engine.saturation import pack

    assert pack(count, bs) == sizes


def test_a_drop_of_exactly_the_threshold_is_saturated():
    """49% -> 47% on 100 samples is a drop of 2 points: at the threshold, not above it (the float
    difference 0.49 - 0.47 is 0.020000000000000018)."""
    from harness.engine.saturation import THRESHOLD, _entry

    class Job:
        hash, budget, key = "h", "b", "pgd"
        spec = AttackSpec("pgd", (("steps", 2),), restarts=5)

    head = [{"index": i, "attacks": {"pgd": {"correct": i < 49}}} for i in range(100)]
    e = _entry(Job, Job, head, set(range(47)), 0.49, 100, 1.0, complete=True)
    assert e["delta"] == THRESHOLD == 0.02 and e["saturated"] is True and e["found_more"] == [47, 48]
    assert _entry(Job, Job, head, set(range(46)), 0.49, 100, 1.0, complete=True)["saturated"] is False


def _first_restart_blocks(monkeypatch) -> list[tuple[int, int]]:
    """(start, block size) of every block of the check's first restart, as the runner attacks them."""
    import harness.engine.runner as runner

    real, starts = runner.attack, []

    def spy(ctx, job, clean, start=0):
        if job.hash.endswith(":restart0") and not job.key.endswith("seed probe"):
            starts.append((start, ctx.cfg.batch_size))
        return real(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", spy)
    return starts


def test_the_check_runs_in_blocks_of_at_most_check_block_samples_whatever_the_runs_batch_size(trained, monkeypatch):
    """A sweep of 100-sample blocks (ABS) would otherwise save its check once per restart: on ABS one
    restart of the doubled C&W on 100 samples is hours, all lost when a session ends inside it."""
    from harness.engine.saturation import CHECK_BLOCK

    starts = _first_restart_blocks(monkeypatch)
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=30, eps=0.25, attacks=("deepfool",),
                    batch_size=100, results_dir=str(trained / "cb"), progress=False, train_if_missing=False, check_budget=30)
    man = load_result(evaluate(cfg, log=lambda *_: None))["manifest"]
    assert CHECK_BLOCK == 10 and starts == [(0, 10), (10, 10), (20, 10)]
    assert man["budget_check"]["n"] == 30 and "deepfool" in man["budget_check"]["attacks"]


def test_check_block_sets_the_checks_block_size_for_a_machine_where_larger_blocks_cost_no_more(trained, monkeypatch):
    """bench run / sweep --check-block N (a GPU: an inference-time defense's block costs about the
    same for 14 or 28 samples): the check's blocks hold N samples instead of CHECK_BLOCK."""
    starts = _first_restart_blocks(monkeypatch)
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=30, eps=0.25, attacks=("deepfool",),
                    batch_size=100, results_dir=str(trained / "cbk"), progress=False, train_if_missing=False, check_budget=30, check_block=15)
    man = load_result(evaluate(cfg, log=lambda *_: None))["manifest"]
    assert starts == [(0, 15), (15, 15)] and "deepfool" in man["budget_check"]["attacks"]
    bad = run_bench("run", "--defense", "cnn", "--norm", "linf", "--check-block", "20", "--results-dir", str(trained / "cbk"), "--no-train")
    assert bad.returncode == 2 and "--check-budget" in bad.stderr and "Traceback" not in bad.stderr


def test_a_deadline_stops_the_check_before_a_block_its_estimate_says_ends_too_late(trained, monkeypatch):
    """bench sweep --time-limit: the check starts no block that its latest block's seconds per
    sample say would end after the deadline; what ran is saved, the rate too, and a rerun continues."""
    import harness.engine.runner as runner
    from harness.engine import saturation
    from harness.engine.runner import prepare

    (trained / "suite.toml").write_text(SUITE.replace("random_start = false", "random_start = true"), encoding="utf-8")
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=60, eps=0.25, attacks=("pgd",),
                    results_dir=str(trained / "dl"), progress=False, train_if_missing=False)
    path = evaluate(cfg, log=lambda *_: None)
    real, calls = runner.attack, []

    def slow_on_paper(ctx, job, clean, start=0):  # each attacked sample "takes" 10 s
        run = real(ctx, job, clean, start)
        run.entry["wall_time_s"] = 10.0 * sum(bool(r["clean_correct"]) for r in clean)
        calls.append(start)
        return run

    monkeypatch.setattr(runner, "attack", slow_on_paper)
    ctx, logs = prepare(cfg, log=lambda *_: None), []
    fresh = load_result(path)
    # what bench sweep reads before it builds the defense: the check not started, its first block priced from the row
    assert saturation.pending(fresh, 60, ("pgd",)) == {"pgd": {}} and saturation.pending(fresh, 60, ("deepfool",)) == {}
    first = sum(bool(r["clean_correct"]) for r in fresh["records"][:10])
    assert saturation.next_block_s(fresh, "pgd", {}, n=60) == pytest.approx(2 * fresh["manifest"]["attacks"]["pgd"]["wall_time_s"] / sum(bool(r["clean_correct"]) for r in fresh["records"]) * first)
    entry = saturation.run(ctx, fresh, n=60, log=logs.append, deadline=50.0, clock=lambda: 0.0)
    pgd = entry["attacks"]["pgd"]
    # block 1 (nothing measured yet) runs; block 2 would take ~10 s x its samples > 50 s
    assert calls == [0] and pgd["restarts_done"] == 0 and pgd["blocks_done"] == 1 and pgd["sample_s"] == 10.0 and pgd["sample_device"] == "cpu"
    assert any("stopping before block 2 of 6 of restart 1" in line and "rerun to continue" in line for line in logs)
    data = load_result(path)
    data["manifest"]["budget_check"] = entry
    # while the first restart runs, the table shows the samples it has attacked, not the bound that
    # counts the 50 samples not yet attacked as standing
    seen = data["records"][:10]
    acc = sum(r["attacks"]["pgd"]["correct"] for r in seen) / 10
    acc2 = sum(r["index"] in set(pgd["robust_doubled"]) for r in seen) / 10
    row = next(line for line in render_saturation({"cnn": data}).splitlines() if "| PGD" in line)
    assert "10 of 60 so far" in row and f"{100 * acc:.1f}%" in row and f"{100 * acc2:.1f}%" in row
    assert pgd["acc_doubled"] == len(pgd["robust_doubled"]) / 60 >= acc2 * 10 / 60 + 50 / 60 - 1e-9
    left = saturation.pending(data, 60)
    assert list(left) == ["pgd"] and left["pgd"]["blocks_done"] == 1
    assert saturation.next_block_s(data, "pgd", left["pgd"], n=60) == 10.0 * sum(bool(r["clean_correct"]) for r in data["records"][10:20])
    calls.clear()
    # a later session: the saved rate stops it before it starts anything
    again = saturation.run(ctx, data, n=60, log=logs.append, deadline=50.0, clock=lambda: 0.0)
    assert calls == [] and again["attacks"]["pgd"]["blocks_done"] == 1
    # ... unless this process runs more threads than the block was measured on (bench sweep --threads
    # auto took the cores another process left): the rate is scaled by the threads, set before the estimate
    import torch

    threads = torch.get_num_threads()
    assert pgd["sample_threads"] == threads
    count = sum(bool(r["clean_correct"]) for r in data["records"][10:20])
    logs.clear()
    try:
        more = saturation.run(ctx, data, n=60, log=logs.append, deadline=10.0 * count * 0.75, clock=lambda: 0.0,
                              pace=lambda: torch.set_num_threads(2 * threads))
    finally:
        torch.set_num_threads(threads)
    assert calls == [10] and more["attacks"]["pgd"]["blocks_done"] == 2 and more["attacks"]["pgd"]["sample_threads"] == 2 * threads
    # block 3 is priced at the 10 s a sample measured on these threads: it does not fit
    assert any("stopping before block 3 of 6" in line and "(10 s a sample, latest block)" in line for line in logs), logs
    calls.clear()
    # a rate measured on a GPU says nothing about this CPU: not used (the row's own run prices the block)
    on_gpu = dict(again, attacks={"pgd": dict(again["attacks"]["pgd"], sample_device="cuda", sample_s=0.001)})
    logs.clear()
    gpu = saturation.run(ctx, data | {"manifest": data["manifest"] | {"budget_check": on_gpu}}, n=60, log=logs.append, deadline=50.0, clock=lambda: 0.0)
    assert calls == [10] and gpu["attacks"]["pgd"]["blocks_done"] == 2 and gpu["attacks"]["pgd"]["sample_device"] == "cpu"
    assert any("measured on cuda, not cpu: not used" in line for line in logs), logs
    calls.clear()
    done = saturation.run(ctx, data | {"manifest": data["manifest"] | {"budget_check": again}}, n=60, log=logs.append)
    assert calls[:2] == [10, 20] and "restarts_done" not in done["attacks"]["pgd"] and isinstance(done["attacks"]["pgd"]["saturated"], bool)
    assert saturation.pending(data | {"manifest": data["manifest"] | {"budget_check": done}}, 60) == {}
    assert set(saturation.pending(data | {"manifest": data["manifest"] | {"budget_check": done}}, 50)) == {"pgd"}  # another n: not this check


def test_a_first_check_block_is_priced_from_the_rows_own_attack_and_a_cheaper_attack_still_runs(trained, monkeypatch):
    """Before any check block has run, the deadline gate prices the first from the row's own run of
    the attack (its seconds per attacked sample x the doubled steps): a check that cannot finish a
    block in the time left does not start one that a session's end would kill. That attack waits;
    the next one, cheaper, still runs in the time left."""
    import harness.engine.runner as runner
    from harness.engine import saturation
    from harness.engine.runner import prepare

    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=60, eps=0.25, attacks=("pgd", "deepfool"),
                    results_dir=str(trained / "rowrate"), progress=False, train_if_missing=False)
    data = load_result(evaluate(cfg, log=lambda *_: None))
    attacked = sum(bool(r["clean_correct"]) for r in data["records"])
    data["manifest"]["attacks"]["pgd"]["wall_time_s"] = 60.0 * attacked  # the row took 60 s a sample: a 10-sample block at 2x is 20 min
    real, calls = runner.attack, []

    def spy(ctx, job, clean, start=0):
        calls.append(job.key.split(" ")[0])
        return real(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", spy)
    ctx, logs = prepare(cfg, log=lambda *_: None), []
    entry = saturation.run(ctx, data, n=60, log=logs.append, deadline=600.0, clock=lambda: 0.0)
    assert "pgd" not in calls and "pgd" not in entry["attacks"]
    assert any("stopping before block 1 of 6 of restart 1" in line and "120 s a sample, the row's own pgd x 2" in line for line in logs), logs
    assert "deepfool" in calls and "restarts_done" not in entry["attacks"]["deepfool"]  # finished in the time left
    data["manifest"]["budget_check"] = entry
    entry = saturation.run(ctx, data, n=60, log=logs.append, deadline=1e9, clock=lambda: 0.0)  # enough time: pgd runs
    assert "pgd" in calls and "pgd" in entry["attacks"] and "deepfool" in entry["attacks"]


def test_a_check_that_left_gradient_attacks_undoubled_says_so():
    """The worst-case drop covers only the attacks the check finished: a row whose PGD was never
    doubled (a plan's check_attacks, a deadline) or stopped between blocks is named in a warning;
    attacks the check does not apply to (noise) and those already shown unsaturated are not."""
    from harness.engine.sanity import outcome_checks
    from harness.engine.saturation import unchecked

    def spec(name, **params):
        return {"spec": {"name": name, "params": params, "restarts": 1, "eot": 1}}

    attacks = {"pgd": spec("pgd", steps=2), "deepfool": spec("deepfool", steps=30), "noise": spec("noise", repeats=3)}
    recs = [{"index": i, "clean_correct": True, "attacks": {k: {"correct": True} for k in attacks}} for i in range(4)]
    done = {"delta": 0.0, "saturated": True, "acc": 1.0, "acc_doubled": 1.0, "found_more": []}
    data = {"manifest": {"attacks": attacks, "budget_check": {"n": 4, "threshold": 0.02, "attacks": {"deepfool": done}, "all": {"delta": 0.0}}}, "records": recs}
    assert unchecked(data) == ["pgd: not checked"]
    assert any("budget check incomplete (pgd: not checked)" in w for w in outcome_checks(data))
    data["manifest"]["budget_check"]["attacks"]["pgd"] = dict(done, saturated=None, restarts_done=1, blocks_done=2, restarts=5)
    assert unchecked(data) == ["pgd: 1 of 5 restarts and 2 blocks of restart 2 done"]
    data["manifest"]["budget_check"]["attacks"]["pgd"] = dict(done, saturated=None, restarts_done=2, restarts=5)
    assert unchecked(data) == ["pgd: 2 of 5 restarts done"]  # stopped between restarts: no "0 blocks of restart 3"
    data["manifest"]["budget_check"]["attacks"]["pgd"] = dict(done, saturated=None, restarts_done=0, blocks_done=1, restarts=5)
    assert unchecked(data) == ["pgd: 1 block of restart 1 of 5 done"]
    data["manifest"]["budget_check"]["attacks"]["pgd"] = dict(done, saturated=False, delta=0.5, restarts_done=0, blocks_done=1)
    assert unchecked(data) == []  # already unsaturated: finishing it only breaks more
    data["manifest"]["budget_check"]["attacks"]["pgd"] = done
    assert unchecked(data) == [] and not any("incomplete" in w for w in outcome_checks(data))
    del data["manifest"]["budget_check"]
    assert unchecked(data) == []  # no check at all: nothing to call incomplete


def test_new_breaks_count_even_when_the_doubled_run_alone_misses_samples_the_suite_broke():
    """On a randomized defense the doubled run on its own can leave standing samples the suite's run
    broke (fresh random start, fresh EOT draws). Its stand-alone accuracy then equals the suite's
    while it broke 3 samples the suite's budget left robust: the budget is not saturated, and the
    table, the sanity warnings and the verdict say so (the row's figure falls 3 points counting both)."""
    from harness.engine.sanity import outcome_checks
    from harness.engine.saturation import _entry, attack_drop, unsaturated

    class Job:
        hash, budget, key = "h", "80 steps", "pgd"
        spec = AttackSpec("pgd", (("steps", 160),), restarts=5)

    # the suite's PGD leaves 0-9 robust; the doubled run alone leaves 0-6 and 10-12 (3 new breaks, 3 misses)
    head = [{"index": i, "clean_correct": True, "attacks": {"pgd": {"correct": i < 10}}} for i in range(100)]
    e = _entry(Job, Job, head, set(range(7)) | {10, 11, 12}, 0.10, 100, 1.0, complete=True)
    assert e["delta"] == 0.0 and e["found_more"] == [7, 8, 9]
    assert e["drop"] == 0.03 and e["acc_both"] == 0.07 and e["saturated"] is False
    old = {k: v for k, v in e.items() if k not in ("drop", "acc_both")}  # a file written before "drop"
    assert attack_drop(old, 100) == 0.03 and attack_drop({"delta": 0.05}, 100) == 0.05
    spec = {"name": "pgd", "params": {"steps": 80}, "restarts": 1, "eot": 1}
    data = {"manifest": {"defense": "eabs", "dataset": "fmnist", "norm": "linf", "eps": 0.1, "n": 100,
                         "attacks": {"pgd": {"spec": spec}},
                         "budget_check": {"n": 100, "threshold": 0.02, "attacks": {"pgd": old}, "all": {"acc": 0.1, "acc_doubled": 0.07, "delta": 0.03}}},
            "records": head}
    assert [k for k, _ in unsaturated(data)] == ["pgd"]
    assert any("pgd: budget not saturated" in w and "10.0% -> 7.0% counting both" in w for w in outcome_checks(data))
    table = render_saturation({"eabs": data})
    row = next(line for line in table.splitlines() if "| PGD" in line or "| pgd" in line)
    assert "10.0%" in row and "7.0%" in row and f"-3.0 {UNSATURATED}" in row
    data["manifest"]["budget_check"]["attacks"]["pgd"] = dict(old, found_more=[7, 8])  # 2 points: within the threshold
    assert unsaturated(data) == []


def test_the_verdict_recomputes_outcome_checks_instead_of_repeating_stale_recorded_ones():
    """A result file records the outcome checks of the moment it was written; a budget check resumed
    since (or a new wording) leaves them stale. The verdict lists the defense's own recorded warnings
    and the outcome checks of the file as it is now, each once."""
    from harness.engine.sanity import is_outcome_check, outcome_checks

    def spec(name, **params):
        return {"spec": {"name": name, "params": params, "restarts": 1, "eot": 1}}

    head = [{"index": i, "clean_correct": True, "attacks": {"pgd": {"correct": i < 10}, "deepfool": {"correct": i < 20}}} for i in range(100)]
    part = {"acc": 0.1, "acc_doubled": 0.9, "delta": -0.8, "restarts": 5, "restarts_done": 0, "blocks_done": 4, "block_size": 10,
            "robust_doubled": [*range(3, 10), *range(40, 100)], "found_more": [0, 1, 2]}
    model = "zero attack gradient on 3/10 clean samples: gradient masking? gradient attacks are blind there"
    stale = ["pgd: budget not saturated: 160 steps lowered accuracy from 10.0% to 8.0% on the first 100 samples",
             "budget check incomplete (pgd: 2 blocks of restart 1 of 5 done; deepfool: not checked): its verdict on the worst case covers only the attacks it finished"]
    data = {"manifest": {"defense": "eabs", "attacks": {"pgd": spec("pgd", steps=80), "deepfool": spec("deepfool", steps=100)},
                         "warnings": [model, *stale],
                         "budget_check": {"n": 100, "threshold": 0.02, "attacks": {"pgd": part}, "all": {"acc": 0.1, "acc_doubled": 0.07, "delta": 0.03}}},
            "records": head}
    now = outcome_checks(data)
    assert now and all(is_outcome_check(w) for w in now) and not is_outcome_check(model)
    v = verdict(data)
    assert v.warnings[0] == model and not set(stale) & set(v.warnings) and list(v.warnings[1:]) == now
    assert any("budget check incomplete (pgd: 4 blocks of restart 1 of 5 done; deepfool: not checked)" in w for w in v.warnings)
    # unfinished but already past the threshold: the figures are bounds that later blocks can only lower
    assert any("pgd: budget not saturated" in w and "10.0% -> at most 7.0% counting both" in w and w.endswith("(check unfinished: 4 blocks of restart 1 of 5 done)")
               for w in v.warnings), v.warnings
    assert any("drops by at least 3.0 points on the first 100 samples with the doubled budgets so far (pgd unfinished;" in w for w in v.warnings), v.warnings
    del part["restarts_done"], part["blocks_done"]  # finished: the figures are final
    now = outcome_checks(data)
    assert any("10.0% -> 7.0% counting both on the first 100 samples" in w and w.endswith("samples") for w in now), now
    assert any("drops by 3.0 points on the first 100 samples with the doubled budgets: the row over-reports" in w for w in now), now


def test_later_restarts_pack_the_standing_samples_and_resume_with_the_same_blocks(trained, monkeypatch):
    """Restart 1 runs position blocks; a later restart attacks only the samples still standing, packed
    into the fewest balanced blocks of at most 1.5 batches (position blocks would hold a few each, and
    an inference-time defense pays per call). A restart interrupted after its first packed block resumes
    with the same blocks (the saved pool and sizes) and ends exactly where the uninterrupted check
    ends; a partial entry saved before ``pool_blocks`` resumes with blocks of the batch size."""
    import harness.engine.runner as runner
    from harness.engine import saturation
    from harness.engine.runner import prepare
    from harness.engine.saturation import pack

    (trained / "suite.toml").write_text(SUITE.replace("steps = 2,", "steps = 1,").replace("random_start = false", "random_start = true"), encoding="utf-8")
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=60, eps=0.25, attacks=("pgd",),
                    batch_size=4, results_dir=str(trained / "pack"), progress=False, train_if_missing=False)
    data = load_result(evaluate(cfg, log=lambda *_: None))
    ctx = prepare(cfg, log=lambda *_: None)
    real, calls = runner.attack, []

    def spy(c, job, clean, start=0):
        if "seed probe" not in job.key:
            calls.append((job.hash.split(":restart", 1)[1].split(":")[0], len(c.ids), start, sum(bool(r["clean_correct"]) for r in clean)))
        return real(c, job, clean, start)

    monkeypatch.setattr(runner, "attack", spy)
    whole = saturation.run(ctx, data, n=60)["attacks"]["pgd"]
    first = [cl for cl in calls if cl[0] == "0"]
    later = [cl for cl in calls if cl[0] != "0"]
    assert [cl[2] for cl in first] == list(range(0, 60, 4)) and all(cl[1] == 60 for cl in first)
    assert later, "the doubled PGD broke every sample in its first restart: this test needs survivors"
    for r in sorted({cl[0] for cl in later}):
        mine = [cl for cl in later if cl[0] == r]  # one context per packed block, holding just its samples
        assert all(cl[2] == 0 and cl[1] == cl[3] for cl in mine) and [cl[3] for cl in mine] == pack(sum(cl[3] for cl in mine), 4)
    # interrupted after the first packed block of the first restart that has two: the saved entry holds its pool
    r2 = next((r for r in sorted({cl[0] for cl in later}) if sum(cl[0] == r for cl in later) >= 2), None)
    if r2 is None:
        pytest.skip("no later restart needed two packed blocks on this model")
    saved, seen = [], []

    def interrupting(c, job, clean, start=0):
        if f":restart{r2}:" in job.hash and "seed probe" not in job.key:
            seen.append(start)
            if len(seen) == 2:
                raise KeyboardInterrupt
        return real(c, job, clean, start)

    monkeypatch.setattr(runner, "attack", interrupting)
    with pytest.raises(KeyboardInterrupt):
        saturation.run(ctx, data, n=60, save=lambda e: saved.append(json.loads(json.dumps(e))))
    part = saved[-1]["attacks"]["pgd"]
    assert part["restarts_done"] == int(r2) and part["blocks_done"] == 1 and len(part["pool"]) > 6 and part["pool_blocks"] == pack(len(part["pool"]), 4)
    monkeypatch.setattr(runner, "attack", real)
    resumed = saturation.run(ctx, data | {"manifest": data["manifest"] | {"budget_check": saved[-1]}}, n=60)["attacks"]["pgd"]
    assert {k: resumed[k] for k in ("acc_doubled", "found_more", "drop", "saturated")} == {k: whole[k] for k in ("acc_doubled", "found_more", "drop", "saturated")}
    # a partial entry written before pool_blocks: its restart keeps the blocks of 4 it was begun with
    old = {k: v for k, v in part.items() if k != "pool_blocks"}
    calls.clear()
    monkeypatch.setattr(runner, "attack", spy)
    saturation.run(ctx, data | {"manifest": data["manifest"] | {"budget_check": saved[-1] | {"attacks": {"pgd": old}}}}, n=60)
    rest = [cl[3] for cl in calls if cl[0] == r2]
    assert rest == [min(4, len(old["pool"]) - c0) for c0 in range(4, len(old["pool"]), 4)]


def test_merge_entry_takes_only_its_own_attacks_and_drops_a_check_of_another_n():
    from harness.engine.saturation import merge_entry

    recs = [{"index": i, "clean_correct": True, "attacks": {"pgd": {"correct": i < 3}, "deepfool": {"correct": i < 2}}} for i in range(4)]
    man = {"attacks": {"pgd": {}, "deepfool": {}}}
    on_disk = {"n": 4, "factor": 2, "restarts": 5, "attacks": {"pgd": {"found_more": [0], "delta": 0.25}, "deepfool": {"found_more": [], "delta": 0.0}}}
    mine = {"n": 4, "factor": 2, "restarts": 5, "threshold": 0.02, "attacks": {"pgd": {"found_more": [], "delta": 0.0}, "deepfool": {"found_more": [1], "delta": 0.25}},
            "not_checked": ["noise"]}
    out = merge_entry({"manifest": man | {"budget_check": on_disk}, "records": recs}, mine, ["deepfool"])
    assert out["attacks"] == {"pgd": on_disk["attacks"]["pgd"], "deepfool": mine["attacks"]["deepfool"]}  # the other process's pgd stays
    assert "not_checked" not in out  # noise is not an attack of this file
    assert out["all"] == {"acc": 0.5, "acc_doubled": 0.0, "delta": 0.5}  # samples 0 and 1 robust to both, broken by pgd's and deepfool's doubled runs
    other_n = merge_entry({"manifest": man | {"budget_check": on_disk | {"n": 3}}, "records": recs}, mine, ["deepfool"])
    assert list(other_n["attacks"]) == ["deepfool"]


def test_later_restarts_skip_samples_the_suites_budget_broke_and_say_the_alone_figure_is_a_bound(trained, monkeypatch):
    """Only a sample the suite's budget left robust can change the verdict: restart 1 attacks every
    sample, restarts 2-5 only those still standing *and* robust at the suite's budget. A sample the
    suite broke that restart 1 missed (a randomized defense's fresh draws; forced here) is not
    attacked again, the entry says its ``acc_doubled`` is an upper bound and the table prints "≤";
    once every suite-robust sample is broken the check ends, whatever else stands."""
    from harness.engine import saturation
    from harness.engine.runner import prepare

    (trained / "suite.toml").write_text(SUITE.replace("random_start = false", "random_start = true"), encoding="utf-8")
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=40, eps=0.25, attacks=("pgd",),
                    batch_size=4, results_dir=str(trained / "focus"), progress=False, train_if_missing=False)
    data = load_result(evaluate(cfg, log=lambda *_: None))
    ctx = prepare(cfg, log=lambda *_: None)
    # the suite's run "broke" three clean-correct samples (forced: PGD-2 breaks few on the tiny CNN)
    missed = {r["index"] for r in data["records"][:40] if r["clean_correct"]}
    missed = set(sorted(missed)[:3])
    data["records"] = [r | {"attacks": r["attacks"] | {"pgd": r["attacks"]["pgd"] | {"correct": False}}} if r["index"] in missed else r for r in data["records"]]
    head = data["records"][:40]
    robust = {r["index"] for r in head if r["attacks"]["pgd"]["correct"]}
    assert len(robust) >= 2 and len(missed) == 3

    def outcome(k, i, r, o):
        if k == 0 and i in missed:  # and restart 1 misses them (a randomized defense's fresh draws)
            return o | {"correct": True}
        return o | {"correct": False} if k == 1 and r["clean_correct"] else o  # restart 2 breaks everything it attacks

    attacked = _spy_restarts(monkeypatch, outcome)
    e = saturation.run(ctx, data, n=40)["attacks"]["pgd"]
    assert attacked[0] == {r["index"] for r in head if r["clean_correct"]}  # restart 1: every sample
    assert attacked[1] and attacked[1] <= robust and not attacked[1] & missed  # restart 2: suite-robust ones only
    # restart 2 broke every suite-robust sample still standing: the check ends although the missed ones stand
    assert sorted(attacked) == [0, 1] and e["stopped"] == "all broken" and e["restarts_run"] == 2
    assert e["acc_both"] == 0 and sorted(e["found_more"]) == sorted(robust)
    assert e["acc_doubled_bound"] is True and e["acc_doubled"] == pytest.approx(len(missed) / 40)
    table = render_saturation({"cnn": data | {"manifest": data["manifest"] | {"budget_check": {"n": 40, "threshold": 0.02, "attacks": {"pgd": e}}}}})
    row = next(line for line in table.splitlines() if "| PGD" in line)
    assert f"≤ {100 * len(missed) / 40:.1f}%" in row and "restarts 2-5 attacked only the samples the suite's budget left robust" in table


def test_the_next_blocks_estimate_counts_only_the_samples_a_later_restart_attacks():
    """A later restart attacks the standing samples the suite's budget left robust: the sweep's deadline
    estimate prices just those, also for a packed block saved before restarts skipped the others."""
    from harness.engine.saturation import next_block_s

    records = [{"index": i, "clean_correct": i < 9, "attacks": {"pgd": {"correct": i < 6}}} for i in range(10)]
    data = {"manifest": {"attacks": {"pgd": {}}, "randomized": True}, "records": records}
    old_pool = {"restarts_done": 1, "blocks_done": 1, "pool": [0, 1, 6, 7, 2, 3], "pool_blocks": [2, 4], "robust_doubled": [2, 3, 6, 7], "sample_s": 10.0}
    assert next_block_s(data, "pgd", old_pool, n=10) == 20.0  # block 2 holds 6, 7 (suite-broken) and 2, 3
    fresh = {"restarts_done": 2, "robust_doubled": [1, 2, 6, 7, 8], "sample_s": 10.0, "block_size": 10}
    assert next_block_s(data, "pgd", fresh, n=10) == 20.0  # restart 3 attacks 1 and 2 only
    first = {"restarts_done": 0, "blocks_done": 0, "sample_s": 10.0, "block_size": 5}
    # a randomized defense's restart 1 packs the suite-robust clean-correct samples (0-5) into one block of 6
    assert next_block_s(data, "pgd", first, n=10) == 60.0
    deterministic = {"manifest": data["manifest"] | {"randomized": False}, "records": records}
    assert next_block_s(deterministic, "pgd", first, n=10) == 50.0  # restart 1 attacks every clean-correct sample of its position block
    packed_first = {"restarts_done": 0, "blocks_done": 1, "pool": [0, 1, 2, 3, 4, 5], "pool_blocks": [3, 3], "robust_doubled": [0, 2, 3, 4, 5], "sample_s": 10.0}
    assert next_block_s(data, "pgd", packed_first, n=10) == 30.0  # its second packed block: 3, 4, 5


def test_the_next_blocks_estimate_scales_a_rate_to_the_threads_the_block_will_run_on():
    """A rate measured on one thread prices a block on two at half (the ideal scaling; a rate of an
    entry saved without ``sample_threads`` is taken as it is)."""
    from harness.engine.saturation import next_block_s, on_threads

    records = [{"index": i, "clean_correct": True, "attacks": {"pgd": {"correct": True}}} for i in range(10)]
    data = {"manifest": {"attacks": {"pgd": {}}, "randomized": True}, "records": records}
    first = {"restarts_done": 0, "blocks_done": 0, "sample_s": 10.0, "block_size": 5}
    assert next_block_s(data, "pgd", first | {"sample_threads": 1}, n=10, threads=2) == 25.0
    assert next_block_s(data, "pgd", first | {"sample_threads": 2}, n=10, threads=1) == 100.0
    assert next_block_s(data, "pgd", first | {"sample_threads": 2}, n=10, threads=2) == 50.0
    assert next_block_s(data, "pgd", first, n=10, threads=2) == 50.0  # saved before stop 47: as it is
    # a rate from another kind of device is not used (nothing else prices this row: None, the block starts)
    assert next_block_s(data, "pgd", first | {"sample_device": "cuda"}, n=10, threads=1, device="cpu") is None
    assert next_block_s(data, "pgd", first | {"sample_device": "cuda"}, n=10, threads=1, device="cuda") == 50.0
    assert next_block_s(data, "pgd", first, n=10, threads=1, device="cpu") == 50.0  # saved before stop 48: a CPU's
    assert on_threads(388.0, 1, 2) == 194.0 and on_threads(388.0, None, 2) == 388.0 and on_threads(388.0, True, 2) == 388.0


def test_a_randomized_defenses_restart_1_attacks_only_the_suite_robust_samples_packed(trained, monkeypatch):
    """On a randomized defense restart 1 too attacks only the clean-correct samples the suite's budget
    left robust, packed into the fewest balanced blocks; the entry has the same ``drop`` /
    ``found_more`` figures, says ``scope: suite-robust`` and leaves the doubled run's accuracy alone
    unmeasured (None; "—" in the table); an interrupted packed restart 1 resumes at its next block."""
    import dataclasses

    import harness.engine.runner as runner
    from harness.engine import saturation
    from harness.engine.runner import prepare
    from harness.engine.saturation import pack

    (trained / "suite.toml").write_text(SUITE.replace("random_start = false", "random_start = true"), encoding="utf-8")
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=40, eps=0.25, attacks=("pgd",),
                    batch_size=4, results_dir=str(trained / "rnd"), progress=False, train_if_missing=False)
    data = load_result(evaluate(cfg, log=lambda *_: None))
    ctx = prepare(cfg, log=lambda *_: None)
    ctx = dataclasses.replace(ctx, jobs=[dataclasses.replace(j, randomized=True) for j in ctx.jobs])  # the suite's EOT policy of a randomized defense
    clean_ok = sorted(r["index"] for r in data["records"][:40] if r["clean_correct"])
    broke = set(clean_ok[::3])  # the suite's run "broke" a third of them (forced: PGD-2 breaks few on the tiny CNN)
    data["records"] = [r | {"attacks": r["attacks"] | {"pgd": r["attacks"]["pgd"] | {"correct": False}}} if r["index"] in broke else r for r in data["records"]]
    head = data["records"][:40]
    robust = {r["index"] for r in head if r["clean_correct"] and r["attacks"]["pgd"]["correct"]}
    assert len(robust) > 6 and broke
    real, calls = runner.attack, []

    def spy(c, job, clean, start=0):
        calls.append((_restart_of(job.hash), job.hash.rsplit(":", 1)[-1], {c.ids[start + j] for j, r in enumerate(clean) if r["clean_correct"]}))
        return real(c, job, clean, start)

    monkeypatch.setattr(runner, "attack", spy)
    e = saturation.run(ctx, data, n=40)["attacks"]["pgd"]
    first = [c for c in calls if c[0] == "restart0"]
    assert set().union(*(c[2] for c in first)) == robust  # neither the suite's breaks nor the clean errors
    assert [len(c[2]) for c in first] == pack(len(robust), 4) and [c[1] for c in first] == [f"block{i}" for i in range(len(first))]
    assert e["scope"] == "suite-robust" and e["acc_doubled"] is None and e["delta"] is None and "acc_doubled_bound" not in e
    assert set(e["found_more"]) <= robust and e["acc_both"] == pytest.approx(len(robust - set(e["found_more"])) / 40)
    assert e["drop"] == pytest.approx(len(e["found_more"]) / 40) and e["acc"] == pytest.approx(len(robust) / 40)
    table = render_saturation({"cnn": data | {"manifest": data["manifest"] | {"budget_check": {"n": 40, "threshold": 0.02, "attacks": {"pgd": e}}}}})
    row = next(line for line in table.splitlines() if "| PGD" in line)
    assert "| —" in row and "its accuracy on its own is not measured" in table

    # killed after restart 1's first packed block: the partial entry holds the pool, and a rerun goes on at block 2
    calls.clear()

    def killed(c, job, clean, start=0):
        if job.hash.endswith("restart0:block1"):
            raise KeyboardInterrupt
        return spy(c, job, clean, start)

    saved = []
    monkeypatch.setattr(runner, "attack", killed)
    with pytest.raises(KeyboardInterrupt):
        saturation.run(ctx, data, n=40, save=lambda entry: saved.append(json.loads(json.dumps(entry))))
    part = saved[-1]["attacks"]["pgd"]
    assert part["restarts_done"] == 0 and part["blocks_done"] == 1 and set(part["pool"]) == robust and part["scope"] == "suite-robust"
    calls.clear()
    monkeypatch.setattr(runner, "attack", spy)
    resumed = data | {"manifest": data["manifest"] | {"budget_check": saved[-1]}}
    saturation.run(ctx, resumed, n=40)
    assert calls[0][:2] == ("restart0", "block1")


def test_once_an_attack_is_decided_unsaturated_later_restarts_attack_only_samples_every_other_attack_leaves_robust(trained, monkeypatch):
    """Stop 66: E-ABS L2's C&W check broke 5 more samples in restart 1 (drop 10 points, verdict
    decided), and its restarts 2-5 would have re-attacked 26 samples of which only 12 survive the
    other attacks. Once a restart ends above the threshold, the further restarts attack only the
    standing samples every other attack leaves robust (the only ones that can change All); the entry
    says so (``narrowed_from``, a note), the table and the verdict read its drop as a lower bound, and
    the sweep's estimate prices only those samples."""
    import dataclasses

    from harness.engine import saturation
    from harness.engine.runner import prepare
    from harness.engine.saturation import next_block_s, robust_elsewhere

    (trained / "suite.toml").write_text(SUITE.replace("random_start = false", "random_start = true"), encoding="utf-8")
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite=str(trained / "suite.toml"), n=40, eps=0.25, attacks=("pgd", "deepfool"),
                    batch_size=4, results_dir=str(trained / "narrow"), progress=False, train_if_missing=False)
    data = load_result(evaluate(cfg, log=lambda *_: None))
    ctx = prepare(cfg, log=lambda *_: None)
    ctx = dataclasses.replace(ctx, jobs=[j for j in ctx.jobs if j.key == "pgd"])  # check PGD only
    head = data["records"][:40]
    robust = sorted(r["index"] for r in head if r["attacks"]["pgd"]["correct"])
    assert len(robust) >= 10
    first_breaks, df_breaks = set(robust[:3]), set(robust[3:7])  # restart 1 breaks 3 (7.5 points); DeepFool "breaks" 4 others
    # DeepFool's record (forced): robust on every clean-correct sample but those 4
    data["records"] = [r | {"attacks": r["attacks"] | {"deepfool": r["attacks"]["deepfool"] | {"correct": bool(r["clean_correct"]) and r["index"] not in df_breaks}}}
                       for r in data["records"]]
    head = data["records"][:40]
    elsewhere = robust_elsewhere(head, {}, "pgd")
    assert not elsewhere & df_breaks and set(robust) - df_breaks <= elsewhere
    # restart 1 breaks first_breaks, every later restart nothing
    attacked = _spy_restarts(monkeypatch, lambda k, i, r, o: o | {"correct": not (k == 0 and i in first_breaks) and bool(r["clean_correct"])})
    saved = []
    e = saturation.run(ctx, data, n=40, save=lambda entry: saved.append(json.loads(json.dumps(entry))))["attacks"]["pgd"]
    assert attacked[0] >= set(robust)  # restart 1: every (clean-correct) sample
    for k in range(1, RESTARTS):  # restarts 2-5: the standing samples DeepFool leaves robust, no others
        assert attacked[k] == (set(robust) - first_breaks) & elsewhere, (k, attacked[k])
    assert e["narrowed_from"] == 2 and "restarts 2-5 attacked only the samples every other attack left robust" in e["note"]
    assert e["saturated"] is False and sorted(e["found_more"]) == sorted(first_breaks) and e["acc_doubled_bound"] is True
    # the sweep's estimate of restart 2, from the entry saved after restart 1: only the narrowed samples
    after_1 = next(s["attacks"]["pgd"] for s in saved if s["attacks"]["pgd"].get("restarts_done") == 1)
    rate_data = data | {"manifest": data["manifest"] | {"randomized": False}}
    count = len((set(robust) - first_breaks) & elsewhere)
    assert next_block_s(rate_data, "pgd", after_1 | {"sample_s": 1.0, "blocks_done": 1}, n=40) is not None
    assert next_block_s(rate_data, "pgd", after_1 | {"sample_s": 1.0, "blocks_done": 0}, n=40) == min(count, 2 * saturation.PROBE)  # a deterministic defense probes first
    assert next_block_s(rate_data | {"manifest": rate_data["manifest"] | {"randomized": True}}, "pgd", after_1 | {"sample_s": 1.0, "blocks_done": 0}, n=40, block=4) == saturation.pack(count, 4)[0]
    checked = data | {"manifest": data["manifest"] | {"budget_check": {"n": 40, "threshold": 0.02, "attacks": {"pgd": e}}}}
    table = render_saturation({"cnn": checked})
    assert "restarts 2+ only on samples every other attack leaves robust" in table
    assert any("at most" in w and "pgd: budget not saturated" in w for w in verdict(checked).warnings), verdict(checked)
