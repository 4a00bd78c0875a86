"""`bench sweep`: plan expansion, local and Ray executors, merge equal to `bench run`, resume after a kill, retries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest

from benchcore.io import data_files
from harness.orchestration import sweep
from harness.cli import main
from harness.engine.runner import RunConfig, attack_jobs, evaluate
from threat_models import default_threat, load_suite
from tests.conftest import run_bench, write_learnable_idx

PLAN = """
defenses = ["cnn"]
datasets = ["fmnist"]
norms = ["linf"]
suites = ["quick"]
attacks = ["pgd", "fgm"]
n = 40
seed = 0
shards = 2
batch_size = 20
device = "auto"
"""


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """Tiny learnable fmnist data and a cnn trained on it for 2 epochs, shared by this module's tests."""
    root = tmp_path_factory.mktemp("sweep")
    write_learnable_idx(root / "data" / "fmnist")
    # one torch thread everywhere (Ray workers get OMP_NUM_THREADS=num_cpus=1 too): avoids
    # oversubscription on a busy 2-core machine and keeps float reductions the same in every process
    env = {"BENCH_DATA": str(root / "data"), "BENCH_CHECKPOINTS": str(root / "ckpt"), "BENCH_SKIP_CHECKSUM": "1", "XDG_CACHE_HOME": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    r = run_bench("train", "--defense", "cnn", "--dataset", "fmnist", "--epochs", "2", "--quiet", env_extra=env)
    assert r.returncode == 0, r.stderr
    return root, env


@pytest.fixture
def env(trained_dir, tmp_path, monkeypatch):
    import torch

    root, envs = trained_dir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield from _env(envs, tmp_path, monkeypatch)
    torch.set_num_threads(threads)


def _env(envs, tmp_path, monkeypatch):
    for k, v in envs.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    from harness import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DATA_ROOT", tmp_path / "no-system-data")
    if hasattr(datasets, "clear_caches"):
        datasets.clear_caches()
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    yield tmp_path, plan, envs


def _reference(results_dir: Path) -> dict:
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", n=40, seed=0, batch_size=20, attacks=("pgd", "fgm"), results_dir=str(results_dir), progress=False, device="cpu", train_if_missing=False)
    return json.loads(evaluate(cfg, log=lambda *_: None).read_text())


def _merged(results_dir: Path) -> dict:
    return json.loads((results_dir / "fmnist" / "linf" / "cnn.json").read_text())


def test_plan_expansion_dry_run_and_bad_plans(env, capsys, tmp_path):
    _, plan, _ = env
    jobs = sweep.expand(sweep.load_plan(plan))
    assert len(jobs) == 4 and {(j.attack, j.start, j.stop) for j in jobs} == {("pgd", 0, 20), ("pgd", 20, 40), ("fgm", 0, 20), ("fgm", 20, 40)}
    assert sweep.shard_ranges(n=250, batch_size=100, shards=2) == [(0, 100), (100, 250)]
    assert main(["sweep", str(plan), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs" in out and "estimate" in out
    for bad, msg in [("colour = 1", "unknown key"), ('norms = ["l3"]', "unknown norm"), ("shards = 5", "shards=5"), ('defenses = ["nope"]', "nope"), ("n = -1", "'n'"),
                     ("options = 3", "'options'"), ("options = { steps = 2 }", "does not take option(s) steps")]:
        p = tmp_path / "bad.toml"
        lines = [line for line in PLAN.splitlines() if not line.startswith(bad.split(" ")[0] + " ")]
        p.write_text("\n".join(lines + [bad]))
        assert main(["sweep", str(p), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err


def test_plan_options_reach_the_defense_and_the_result_key(env, tmp_path):
    _, plan, _ = env
    p = tmp_path / "opts.toml"
    p.write_text(plan.read_text().replace('defenses = ["cnn"]', 'defenses = ["vsmooth-cnn"]') + "\noptions = { steps = 2 }\n")
    jobs = sweep.expand(sweep.load_plan(p))
    assert jobs and all(j.variant == "vsmooth-cnn-steps2" and j.defense_options == {"steps": 2} for j in jobs)
    assert sweep._cfg(jobs[0], attacks=None).options == {"steps": 2}


def test_local_and_ray_sweeps_equal_bench_run(env):
    tmp, plan, envs = env
    ref = _reference(tmp / "ref")
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(tmp / "local"), executor="local", progress=False, log=lambda *_: None) == 0
    local = _merged(tmp / "local")
    assert local["records"] == ref["records"]
    # the merge adds only the digest of the shard files it read
    assert [k for k in local["manifest"] if k != "shards_sha256"] == list(ref["manifest"]) and list(local["manifest"]["attacks"]) == ["pgd", "fgm"]
    assert len(local["manifest"]["shards_sha256"]) == 64
    for k in ("sample_ids", "n", "seed", "eps", "checkpoint_sha256", "score_draws", "device"):
        assert local["manifest"][k] == ref["manifest"][k], k
    assert any(not r["attacks"]["pgd"]["correct"] and r["clean_correct"] for r in ref["records"])  # attacks did something

    # bench run's CLI (a separate process) gives the same records too
    r = run_bench("run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--n", "40", "--batch-size", "20", "--attacks", "pgd,fgm", "--results-dir", str(tmp / "cli"), "--quiet", "--device", "cpu", env_extra=envs)
    assert r.returncode == 0, r.stderr
    assert _merged(tmp / "cli")["records"] == ref["records"]

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(tmp / "ray"), executor="ray", progress=False, log=lambda *_: None) == 0
        # retries on Ray: a task that always raises is tried 1 + max_retries times, then reported
        from harness.orchestration.executors.ray_executor import RayExecutor

        marks = tmp / "marks"
        marks.mkdir()

        def flaky(job, results_dir):
            (marks / f"{job.name.replace('/', '_')}-{time.monotonic_ns()}").touch()
            if job.attack == "fgm":
                raise RuntimeError("boom")
            return "ok"

        jobs = sweep.expand(sweep.load_plan(plan))
        failures = RayExecutor().run(jobs, results_dir=str(tmp / "unused"), max_retries=2, progress=False, log=lambda *_: None, fn=flaky)
        assert sorted(failures) == sorted(j.name for j in jobs if j.attack == "fgm") and all("boom" in e for e in failures.values())
        tries = [p.name.rsplit("-", 1)[0] for p in marks.iterdir()]
        assert sorted(tries.count(j.name.replace("/", "_")) for j in jobs) == [1, 1, 3, 3]
    finally:
        ray.shutdown()
    assert _merged(tmp / "ray")["records"] == ref["records"]


def _finished_shards(out: Path) -> list[Path]:
    """Shard files that hold their job's attack (a file with only the clean pass is a job cut short;
    the temporary file of a write the kill cut short is not a shard file)."""
    done = []
    for p in data_files(out / ".shards", "**/*.json"):
        try:
            if json.loads(p.read_text(encoding="utf-8"))["manifest"]["attacks"]:
                done.append(p)
        except (OSError, ValueError, KeyError):
            pass
    return done


def test_kill_and_resume_runs_only_remaining_jobs(env):
    tmp, plan, envs = env
    out = tmp / "res"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(plan), "--results-dir", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, **envs, BENCH_SWEEP_JOB_SLEEP="4"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a loaded machine can take a minute to start the first job
    while time.monotonic() < deadline and not _finished_shards(out) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # a job's shard file is saved after its clean pass too: only one holding its attack is finished
    partials = {p: p.stat().st_mtime_ns for p in _finished_shards(out)}
    assert 1 <= len(partials) < 4
    assert not (out / "fmnist" / "linf" / "cnn.json").exists()

    r = run_bench("sweep", str(plan), "--results-dir", str(out), "--quiet", env_extra=envs)
    assert r.returncode == 0, r.stderr
    assert f"skipping {len(partials)} finished jobs; running {4 - len(partials)}" in r.stdout
    assert all(p.stat().st_mtime_ns == m for p, m in partials.items())  # finished jobs were not rerun
    assert len(data_files(out / ".shards", "**/*.json")) == 4
    assert _merged(out)["records"] == _reference(tmp / "ref")["records"]

    r2 = run_bench("sweep", str(plan), "--results-dir", str(out), "--quiet", env_extra=envs)
    assert r2.returncode == 0 and "skipping 4 finished jobs; running 0" in r2.stdout


def test_failed_job_is_retried_then_reported(env, monkeypatch, capsys):
    tmp, plan, _ = env
    calls: dict[str, int] = {}
    real = sweep.run_job

    def flaky(job, results_dir):
        calls[job.name] = calls.get(job.name, 0) + 1
        if job.attack == "fgm" and job.shard == 0:
            raise RuntimeError("boom")
        if job.attack == "pgd" and job.shard == 1 and calls[job.name] == 1:
            raise RuntimeError("transient")
        return real(job, results_dir)

    monkeypatch.setattr(sweep, "run_job", flaky)
    rc = main(["sweep", str(plan), "--results-dir", str(tmp / "res"), "--max-retries", "2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1
    assert calls == {"fmnist/linf/cnn/quick/pgd/shard0": 1, "fmnist/linf/cnn/quick/pgd/shard1": 2, "fmnist/linf/cnn/quick/fgm/shard0": 3, "fmnist/linf/cnn/quick/fgm/shard1": 1}
    assert "FAILED fmnist/linf/cnn/quick/fgm/shard0: RuntimeError: boom" in out and out.count("FAILED") == 1
    assert len(list((tmp / "res").glob(".shards/**/*.json"))) == 3  # the other jobs finished
    assert not (tmp / "res" / "fmnist" / "linf" / "cnn.json").exists()  # incomplete: not merged

    # rerun without the fault: only the failed job runs, then the merge happens
    monkeypatch.setattr(sweep, "run_job", real)
    assert main(["sweep", str(plan), "--results-dir", str(tmp / "res"), "--quiet"]) == 0
    assert "skipping 3 finished jobs; running 1" in capsys.readouterr().out
    assert (tmp / "res" / "fmnist" / "linf" / "cnn.json").exists()


def test_budget_check_on_a_merged_sweep_survives_a_re_merge(env):
    tmp, plan, _ = env
    out = tmp / "res"
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lambda *_: None) == 0
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", n=40, seed=0, batch_size=20, attacks=("pgd", "fgm"), results_dir=str(out),
                    progress=False, device="cpu", train_if_missing=False, check_budget=20)
    evaluate(cfg, log=lambda *_: None)  # every attack is done: only the check runs
    check = _merged(out)["manifest"]["budget_check"]
    assert list(check["attacks"]) == ["pgd"] and check["not_checked"] == ["fgm"]  # FGM has no step budget
    checked_by = _merged(out)["manifest"]["command"]
    before = (out / "fmnist" / "linf" / "cnn.json").read_bytes()
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lambda *_: None) == 0
    # nothing new in the shards: the rerun leaves the merged file (check, command, date) untouched
    assert (out / "fmnist" / "linf" / "cnn.json").read_bytes() == before
    assert sweep.merge(sweep.expand(sweep.load_plan(plan)), str(out), command="bench sweep again") == []
    # a forced re-merge writes the records again; the command that ran the kept check stays on
    # record (before, the re-merge dropped it)
    merged = sweep.merge(sweep.expand(sweep.load_plan(plan)), str(out), command="bench sweep again", force=True)
    assert merged and _merged(out)["manifest"]["command"] == "bench sweep again"
    assert checked_by in _merged(out)["manifest"]["earlier_commands"]
    assert _merged(out)["manifest"]["budget_check"] == check
    # a shard file that changed (a job redone) is merged again
    shard = sorted((out / ".shards").glob("**/*.json"))[0]
    shard.write_text(json.dumps(json.loads(shard.read_text())))
    assert sweep.merge(sweep.expand(sweep.load_plan(plan)), str(out), command="bench sweep redone") == [out / "fmnist" / "linf" / "cnn.json"]
    assert _merged(out)["manifest"]["command"] == "bench sweep redone"


def test_runner_stages_by_hand_give_bench_runs_records(env):
    """The pipeline's stages (prepare -> clean_pass -> attack -> Evaluation) on the second block alone
    give exactly the records `bench run` wrote for it; misclassified samples are adversarial at distance 0."""
    from harness.errors import BenchUserError
    from harness.engine.runner import Evaluation, attack, blocks, clean_pass, not_attacked, prepare

    tmp, _, _ = env
    ref = _reference(tmp / "ref")
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", n=40, seed=0, batch_size=20, attacks=("pgd", "fgm"), progress=False, device="cpu", train_if_missing=False)
    ctx = prepare(cfg, log=lambda *_: None)
    with pytest.raises(BenchUserError, match="not block-aligned"):
        blocks(ctx, 10, 40)
    clean = clean_pass(ctx, 20, 40)
    ev = Evaluation.start(ctx, clean)
    runs = [attack(ctx, job, ev.records, 20) for job in ctx.jobs]
    for run in runs:
        ev.add(run)
    assert ev.records == ref["records"][20:]
    assert [r.key for r in runs] == ["pgd", "fgm"] and ev.manifest["attacks"]["pgd"]["spec_hash"] == ref["manifest"]["attacks"]["pgd"]["spec_hash"]
    # a sample the defense got wrong (here: marked so) is not attacked and is adversarial at distance 0
    marked = [dict(r, attacks={}, clean_correct=(k != 3)) for k, r in enumerate(clean.records)]
    run = attack(ctx, ctx.jobs[0], marked, 20)
    assert run.outcomes[3] == not_attacked(marked[3], minimization=False) == {"correct": False, "abstained": False, "norm": 0.0}
    assert not_attacked({"clean_abstained": True}, minimization=True) == {"correct": False, "abstained": True, "norm": 0.0, "min_norm": 0.0}
    with pytest.raises(RuntimeError, match="outcomes for"):
        ev.add(type(runs[0])("x", {}, runs[0].outcomes[:3]))


SUITE = """
# {comment}
description = "two attacks"
eot_randomized = 5

[[attack]]
name = "pgd"
norms = ["linf"]
params = {{ steps = {steps}, rel_stepsize = 0.1 }}

[[attack]]
name = "fgm"
norms = ["linf"]
params = {{}}
"""


def _done_after_edit(tmp_path, *, comment: str, steps: int) -> dict[str, bool]:
    """Fake finished partial files for the plan on suite v1, then which jobs count as done on the edited suite."""
    tmp_path.mkdir(parents=True)
    suite = tmp_path / "two.toml"
    plan_text = PLAN.replace('suites = ["quick"]', f'suites = ["{suite}"]')
    suite.write_text(SUITE.format(comment="v1", steps=10))
    plan = sweep.parse_plan(tomllib.loads(plan_text))
    (tmp_path / "plan.toml").write_text(plan_text)
    for job in sweep.expand(plan):
        path = job.partial_path(tmp_path / "res")
        assert tmp_path / "res" / ".shards" in path.parents  # a suite given by absolute path stays inside
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"job": {}, "job_hash": job.spec_hash}))
    suite.write_text(SUITE.format(comment=comment, steps=steps))
    return {f"{j.attack}{j.shard}": sweep.is_done(j, tmp_path / "res") for j in sweep.expand(plan)}


def test_finished_jobs_survive_a_suite_comment_edit_but_not_a_budget_change(env, tmp_path, capsys):
    assert all(_done_after_edit(tmp_path / "a", comment="v1", steps=10).values())
    # a comment edit does not change what any job computes: nothing reruns
    assert all(_done_after_edit(tmp_path / "b", comment="edited comment", steps=10).values())
    # a budget change of one attack reruns that attack's jobs only
    assert _done_after_edit(tmp_path / "c", comment="v1", steps=20) == {"pgd0": False, "pgd1": False, "fgm0": True, "fgm1": True}
    assert main(["sweep", str(tmp_path / "c" / "plan.toml"), "--dry-run", "--results-dir", str(tmp_path / "c" / "res")]) == 0
    out = capsys.readouterr().out
    assert "4 jobs; estimated cost" in out and "2 finished in" in out and out.count("to run") == 2 + 1, out


def test_partial_files_from_before_attack_ids_are_recognised_by_their_recorded_spec(env, tmp_path):
    plan = sweep.parse_plan(tomllib.loads(PLAN))
    job = next(j for j in sweep.expand(plan) if j.attack == "pgd")
    threat = default_threat("fmnist", "linf")
    spec = next(j.spec for j in attack_jobs(load_suite("quick", norm="linf", dataset="fmnist").entries, threat) if j.key == "pgd")
    old_job = {k: v for k, v in asdict(job).items() if k != "attack_id"} | {"suite_sha": "text-hash", "options": []}
    entry = {"spec_hash": spec.spec_hash(), "eps": threat.eps}
    path = job.partial_path(tmp_path)
    path.parent.mkdir(parents=True)

    def write(job_dict, attack_entry, draws=1):
        path.write_text(json.dumps({"job": job_dict, "job_hash": "stale", "manifest": {"score_draws": draws, "attacks": {"pgd": attack_entry}}}))
        return sweep.is_done(job, tmp_path)

    assert write(old_job, entry)
    assert not write(old_job, entry | {"spec_hash": "000000000000"})  # another budget
    assert not write(old_job, entry | {"eps": 0.2})  # another eps
    assert not write(old_job, entry, draws=5)  # another clean-pass scoring
    assert not write(old_job | {"n": 41}, entry)  # another job
    assert not write({k: v for k, v in old_job.items() if k != "suite_sha"}, entry)  # neither format
    path.write_text("{not json")
    assert not sweep.is_done(job, tmp_path)


def test_shards_of_other_defense_settings_or_checkpoints_are_not_finished_work(env, tmp_path):
    plan = sweep.parse_plan(tomllib.loads(PLAN))
    jobs = sweep.expand(plan)
    configs = sweep.today_configs(jobs)
    today = configs[(jobs[0].defense, jobs[0].dataset, jobs[0].options, jobs[0].arch)]
    assert today.config == {"arch": "table2.1"}
    sha = today.checkpoint_sha256
    assert sha and len(sha) == 64  # the card of the module's trained cnn
    job = jobs[0]
    path = job.partial_path(tmp_path)
    path.parent.mkdir(parents=True)
    cases = (({"arch": "table2.1"}, sha, True), ({"arch": "older"}, sha, False), ({}, sha, True),
             ({"arch": "table2.1"}, "0" * 64, False),  # computed on another checkpoint (retrained since)
             ({"arch": "table2.1"}, None, True))  # a file that does not say: the job spec decides
    for recorded, ckpt, done in cases:
        path.write_text(json.dumps({"job": asdict(job), "job_hash": job.spec_hash, "manifest": {"defense_config": recorded, "checkpoint_sha256": ckpt}}))
        assert sweep.is_done(job, tmp_path, configs) is done, (recorded, ckpt)
        assert sweep.is_done(job, tmp_path)  # without today's settings: the job spec alone


def test_finished_groups_are_merged_before_the_remaining_jobs_run(env, monkeypatch):
    tmp, plan, envs = env
    out = tmp / "res"
    plan.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["fgm"]'))
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    linf = out / "fmnist" / "linf" / "cnn.json"
    linf.unlink()
    plan.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["fgm"]').replace('norms = ["linf"]', 'norms = ["linf", "l2"]'))
    seen = {}

    class Recorder:
        def run(self, jobs, **kw):
            seen["linf merged before"] = linf.is_file()
            seen["jobs"] = {j.norm for j in jobs}
            return {}

    monkeypatch.setattr(sweep, "get_executor", lambda *a, **k: Recorder())
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    assert seen == {"linf merged before": True, "jobs": {"l2"}}
    assert not (out / "fmnist" / "l2" / "cnn.json").exists()  # its jobs did not run


def test_a_group_is_merged_and_checked_when_its_last_job_lands_not_when_the_sweep_ends(env, monkeypatch):
    """A sweep over two groups (L∞ then L2): the L∞ file is written, and its budget check run, before
    the first L2 job starts; a failing merge after a job is logged and the end of the sweep merges."""
    tmp, plan, _ = env
    plan.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["fgm", "pgd"]').replace('norms = ["linf"]', 'norms = ["linf", "l2"]') + "check_budget = 20\n")
    out = tmp / "res"
    linf = out / "fmnist" / "linf" / "cnn.json"
    seen = []
    real = sweep.run_job

    def spy(job, results_dir):
        if job.norm == "l2" and not seen:
            seen.append(json.loads(linf.read_text())["manifest"] if linf.is_file() else None)
        return real(job, results_dir)

    monkeypatch.setattr(sweep, "run_job", spy)
    lines = []
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lines.append) == 0
    assert seen[0] is not None, "the L∞ group was not merged when its last job landed"
    assert "pending_attacks" not in seen[0] and set(seen[0]["attacks"]) >= {"pgd", "fgm"}
    assert "restarts_done" not in seen[0]["budget_check"]["attacks"]["pgd"]  # checked before the L2 jobs
    assert (out / "fmnist" / "l2" / "cnn.json").is_file()
    assert sum(line == f"wrote {linf}" for line in lines) == 1  # merged once: the end of the sweep finds it merged

    # a merge that fails after a job is a warning; the sweep's final merge writes the file
    linf.unlink()
    (out / "fmnist" / "l2" / "cnn.json").unlink()
    for p in data_files(out / ".shards", "**/*.json"):
        if "shard-1-of-2" in p.name and "/linf/" in p.as_posix():
            p.unlink()
    real_merge, calls = sweep.merge, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the first after a job lands (the first call merges the finished L2 group up front)
            raise OSError("disk full")
        return real_merge(*a, **k)

    monkeypatch.setattr(sweep, "merge", flaky)
    lines.clear()
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lines.append) == 0
    assert any("WARNING" in line and "disk full" in line and "merges it at its end" in line for line in lines), lines
    assert linf.is_file() and "pending_attacks" not in _merged(out)["manifest"]


def test_a_partial_merge_is_refreshed_when_one_of_its_pending_attacks_finishes(env, capsys):
    """A group merged with ``--merge-partial`` gets each attack in its file as that attack's last shard
    lands, without another ``--merge-partial``; a shard that leaves its attack unfinished does not rewrite it."""
    tmp, plan, _ = env
    plan.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["fgm", "pgd"]'))
    out = tmp / "res"
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet", "--only", "fgm"]) == 0
    assert main(["sweep", str(plan), "--results-dir", str(out), "--merge-partial"]) == 0
    assert _merged(out)["manifest"]["pending_attacks"] == {"pgd": "0/2 shards"}
    sweep_jobs = [j for j in sweep.expand(sweep.load_plan(plan)) if j.attack.startswith("pgd")]
    path = out / "fmnist" / "linf" / "cnn.json"
    landed = sweep.landed_merge(sweep.load_plan(plan), sweep.expand(sweep.load_plan(plan)), out, command="test", configs=None, log=lambda *_: None)
    sweep.run_job(sweep_jobs[0], str(out))
    before = path.read_bytes()
    landed(sweep_jobs[0])
    assert path.read_bytes() == before  # pgd still has a shard to go
    sweep.run_job(sweep_jobs[1], str(out))
    landed(sweep_jobs[1])
    merged = _merged(out)["manifest"]
    assert "pending_attacks" not in merged and "pgd" in merged["attacks"]


def test_dry_run_scales_the_jobs_to_run_from_finished_shard_wall_times(tmp_path):
    """Per sample of the same attack on the same defense; else that attack on another defense times
    the two defenses' ratio on an attack both ran; nothing measured: no estimate."""
    raw = tomllib.loads(PLAN) | {"defenses": ["cnn", "adv-linf"]}
    jobs = sweep.expand(sweep.parse_plan(raw))
    res = tmp_path / "res"
    assert sweep.measured_estimate(jobs, res) == ""

    def finish(job, seconds):
        p = job.partial_path(res)
        p.parent.mkdir(parents=True, exist_ok=True)
        recs = [{"index": i} for i in range(job.start, job.stop)]
        p.write_text(json.dumps({"manifest": {"attacks": {job.attack: {"wall_time_s": seconds - 2.0}}, "clean_wall_time_s": 2.0}, "records": recs}))

    by = {(j.defense, j.attack, j.shard): j for j in jobs}
    finish(by[("cnn", "pgd", 0)], 40.0)   # 2 s per sample
    finish(by[("cnn", "fgm", 0)], 10.0)   # 0.5 s per sample
    finish(by[("adv-linf", "pgd", 0)], 120.0)  # 6 s per sample: adv-linf is 3x cnn on pgd
    todo = [by[("cnn", "pgd", 1)], by[("adv-linf", "pgd", 1)], by[("adv-linf", "fgm", 0)], by[("adv-linf", "fgm", 1)]]
    out = sweep.measured_estimate(todo, res)
    rows = {tuple(line.split()[:4]): line for line in out.splitlines() if line.startswith(("cnn", "adv-linf"))}
    assert "this attack on this defense" in rows[("cnn", "fmnist", "pgd", "1")]
    assert "fgm on cnn x (pgd on adv-linf / pgd on cnn)" in rows[("adv-linf", "fmnist", "fgm", "2")]
    # 20 x 2 s + 20 x 6 s + 2 x 20 x 0.5 s x 3 = 220 s
    assert f"about {220 / 3600:.1f} core-hours" in out
    assert rows[("adv-linf", "fmnist", "fgm", "2")].split()[4] == f"{60 / 3600:.1f}"


def test_dry_run_estimates_the_budget_check_from_the_shards(tmp_path):
    """The check (2x steps; the first pass on every sample, each further restart on the samples still
    standing in the finished shards) is scaled from the measured seconds per sample; FGM (no steps) is
    not checked, an attack with no finished shard is listed as not estimated, a finished check is skipped."""
    plan = sweep.parse_plan(tomllib.loads(PLAN) | {"attacks": ["pgd", "fgm", "deepfool"], "check_budget": 20})
    jobs = sweep.expand(plan)
    res = tmp_path / "res"
    by = {(j.attack, j.shard): j for j in jobs}
    job = by[("pgd", 0)]  # samples 0-19: 16 clean-correct, 4 of them robust to PGD; 1 s per sample
    recs = [{"index": i, "clean_correct": i < 16, "attacks": {"pgd": {"correct": i < 4}}} for i in range(job.start, job.stop)]
    job.partial_path(res).parent.mkdir(parents=True, exist_ok=True)
    job.partial_path(res).write_text(json.dumps({"manifest": {"attacks": {"pgd": {"wall_time_s": 18.0}}, "clean_wall_time_s": 2.0}, "records": recs}))
    out = sweep.check_estimate(plan, jobs, res)
    # 1 s x 20 samples x 2 (doubled steps) x (1 + 4 restarts x 25% standing) = 80 s
    assert f"about {80 / 3600:.1f} core-hours more" in out
    row = next(line for line in out.splitlines() if line.startswith("cnn"))
    assert row.split()[:4] == ["cnn", "fmnist", "linf", "pgd"] and "25% of 16" in row
    assert "not estimated (no finished shard of that attack on that defense yet): cnn/linf/deepfool" in out
    assert "fgm" not in out
    # a finished check of the same n (and today's checkpoint) is skipped
    from harness.engine.models import today_checkpoint_sha

    path = res / "fmnist" / "linf" / "cnn.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    today = today_checkpoint_sha("cnn", "fmnist")
    path.write_text(json.dumps({"manifest": {"checkpoint_sha256": today, "budget_check": {"n": 20, "attacks": {"pgd": {"delta": 0.0}, "deepfool": {"delta": 0.0}}}}, "records": []}))
    assert sweep.check_estimate(plan, jobs, res) == ""
    assert sweep.check_estimate(sweep.parse_plan(tomllib.loads(PLAN)), jobs, res) == ""  # no check_budget
    # ... but not a check of another checkpoint: the merge of today's row starts it over
    path.write_text(json.dumps({"manifest": {"checkpoint_sha256": "another checkpoint", "budget_check": {"n": 20, "attacks": {"pgd": {"delta": 0.0}}}}, "records": []}))
    assert f"about {80 / 3600:.1f} core-hours more" in sweep.check_estimate(plan, jobs, res)


def test_dry_run_prices_a_randomized_defenses_first_check_pass_on_the_suite_robust_share(tmp_path, monkeypatch):
    """On a randomized defense the check's restart 1 attacks only the samples the suite's attack left
    robust (harness/engine/saturation.py), so the estimate prices it on that share too."""
    import harness.engine.models as models

    real, flag = models.build_defense, {"randomized": False}

    def built(*a, **kw):
        d = real(*a, **kw)
        d.randomized = flag["randomized"]
        return d

    monkeypatch.setattr(models, "build_defense", built)
    plan = sweep.parse_plan(tomllib.loads(PLAN) | {"attacks": ["pgd"], "check_budget": 20})
    jobs = sweep.expand(plan)
    res = tmp_path / "res"
    job = next(j for j in jobs if j.shard == 0)
    recs = [{"index": i, "clean_correct": i < 16, "attacks": {"pgd": {"correct": i < 4}}} for i in range(job.start, job.stop)]
    job.partial_path(res).parent.mkdir(parents=True, exist_ok=True)
    job.partial_path(res).write_text(json.dumps({"manifest": {"attacks": {"pgd": {"wall_time_s": 17998.0}}, "clean_wall_time_s": 2.0}, "records": recs}))

    def hours() -> float:
        row = next(line for line in sweep.check_estimate(plan, jobs, res).splitlines() if line.startswith("cnn"))
        return float(row.split()[4])

    deterministic = hours()  # x (1 + 4 restarts x 25% standing)
    flag["randomized"] = True  # restart 1 on the 25% the suite left robust too: x (0.25 + 4 x 25%)
    assert deterministic > 10 and hours() == pytest.approx(deterministic * 1.25 / 2, abs=0.1)



def test_a_plan_with_check_budget_checks_each_merged_file(env, monkeypatch):
    tmp, plan, _ = env
    plan.write_text(PLAN + "check_budget = 20\n")
    out = tmp / "res"
    lines = []
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lines.append) == 0
    check = _merged(out)["manifest"]["budget_check"]
    assert check["n"] == 20 and list(check["attacks"]) == ["pgd"] and check["not_checked"] == ["fgm"]
    assert any("budget check of" in line for line in lines)
    # a rerun keeps the finished check and the file, and builds no defense for it (read from the file alone)
    import harness.engine.runner as runner

    def no_run(*a, **k):
        raise AssertionError("a finished check must not rerun the evaluation")

    monkeypatch.setattr(runner, "evaluate", no_run)
    monkeypatch.setattr(runner, "check_file", no_run)
    before = (out / "fmnist" / "linf" / "cnn.json").read_text()
    lines.clear()
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lines.append) == 0
    assert json.loads((out / "fmnist" / "linf" / "cnn.json").read_text())["manifest"]["budget_check"] == check
    assert json.loads(before)["records"] == _merged(out)["records"]
    assert any("finished on its first 20 samples; nothing to run" in line for line in lines)
    # a check left partway whose next block cannot fit the deadline is not started either; one that fits is
    path = out / "fmnist" / "linf" / "cnn.json"
    data = json.loads(before)
    head = data["records"][:20]
    standing = [r["index"] for r in head if r["clean_correct"]]
    data["manifest"]["budget_check"]["attacks"]["pgd"] |= {"restarts_done": 1, "robust_doubled": standing, "sample_s": 60.0}
    path.write_text(json.dumps(data))
    from harness.engine import saturation

    est = saturation.next_block_s(data, "pgd", saturation.pending(data, 20)["pgd"], n=20)
    assert est == 60.0 * 2 * saturation.PROBE  # a deterministic defense: restart 2 begins with the seed probe
    lines.clear()
    jobs = sweep.expand(sweep.load_plan(plan))
    sweep.check_merged(jobs, out, n=20, progress=False, log=lines.append, deadline=time.time() + est - 60)
    assert any("not started: the next block of each attack left is estimated at pgd" in line and "rerun to continue" in line for line in lines), lines
    monkeypatch.setattr(runner, "check_file", lambda cfg, **k: lines.append(f"ran {cfg.attacks}") or path)
    sweep.check_merged(jobs, out, n=20, progress=False, log=lines.append, deadline=time.time() + est + 600)
    assert lines[-2:] == [f"budget check of {path}: pgd on its first 20 samples", "ran ('pgd', 'fgm')"]
    from harness.errors import BenchUserError

    with pytest.raises(BenchUserError, match="check_budget"):
        sweep.parse_plan(tomllib.loads(PLAN) | {"check_budget": -1})


def test_check_attacks_limits_the_budget_check_to_the_named_attacks(env):
    """`check_attacks = ["deepfool"]`: the merged file's check runs DeepFool only and says PGD was left out."""
    tmp, plan, _ = env
    plan.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["pgd", "deepfool"]') + 'check_budget = 20\ncheck_attacks = ["deepfool"]\n')
    out = tmp / "res-check-attacks"
    lines = []
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lines.append) == 0
    merged = _merged(out)
    assert set(merged["manifest"]["attacks"]) >= {"pgd", "deepfool"}
    assert list(merged["manifest"]["budget_check"]["attacks"]) == ["deepfool"]
    assert any("pgd left out by the plan's check_attacks" in line for line in lines)
    from harness.errors import BenchUserError

    base = tomllib.loads(PLAN)
    with pytest.raises(BenchUserError, match="check_attacks cw not in the plan's attacks"):
        sweep.parse_plan(base | {"check_budget": 20, "check_attacks": ["cw"]})
    with pytest.raises(BenchUserError, match="set check_budget"):
        sweep.parse_plan(base | {"check_attacks": ["pgd"]})
    with pytest.raises(BenchUserError, match="unknown attack 'pgdd'"):
        sweep.parse_plan({k: v for k, v in base.items() if k != "attacks"} | {"check_budget": 20, "check_attacks": ["pgdd"]})
    with pytest.raises(BenchUserError, match="non-empty list"):
        sweep.parse_plan(base | {"check_budget": 20, "check_attacks": []})


def test_merge_partial_writes_the_finished_attacks_and_marks_the_rest_pending(env, capsys):
    """`bench sweep --merge-partial`: a group with an unfinished attack is merged from its finished
    attacks (records equal bench run's), the rest named pending, the verdict "incomplete"; the
    finished sweep's merge then replaces it with the whole file."""
    from harness.engine.sanity import verdict
    from harness.store.results import pending_attacks

    tmp, plan, envs = env
    out = tmp / "res-partial"
    assert main(["sweep", str(plan), "--merge-partial", "--results-dir", str(out)]) == 0
    assert "nothing to merge" in capsys.readouterr().out and not (out / "fmnist").exists()
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    ref = _merged(out)
    (out / "fmnist" / "linf" / "cnn.json").unlink()
    shard = next(p for p in data_files(out / ".shards", "**/*.json") if "/fgm/" in p.as_posix() and "shard-1-of-2" in p.name)
    shard.unlink()
    assert main(["sweep", str(plan), "--merge-partial", "--results-dir", str(out)]) == 0
    assert "pending: fgm 1/2 shards" in capsys.readouterr().out
    part = _merged(out)
    assert list(part["manifest"]["attacks"]) == ["pgd"] and part["manifest"]["pending_attacks"] == {"fgm": "1/2 shards"}
    assert [r["attacks"]["pgd"] for r in part["records"]] == [r["attacks"]["pgd"] for r in ref["records"]]
    v = verdict(part)
    assert not v.reliable and "incomplete: fgm pending" in v.reasons
    # an attack added to the file since (bench run) is no longer pending
    assert pending_attacks(dict(part["manifest"], attacks={"pgd": {}, "fgm": {}})) == {}
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    full = _merged(out)
    assert "pending_attacks" not in full["manifest"] and full["records"] == ref["records"]
    assert not any(r.startswith("incomplete") for r in verdict(full).reasons)


def test_a_merge_of_shards_from_several_commits_or_machines_records_each_source(env):
    """The merged file does not pass the first shard's commit and device off as the whole row's:
    shards written at another commit or on another machine are listed with their source."""
    from harness.store.provenance import code_commit

    tmp, plan, _ = env
    out = tmp / "res-sources"
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    same = _merged(out)["manifest"]
    assert "shard_sources" not in same  # one process wrote every shard: nothing to list
    shard = next(p for p in data_files(out / ".shards", "**/*.json") if "/fgm/" in p.as_posix() and "shard-1-of-2" in p.name)
    data = json.loads(shard.read_text())
    data["manifest"].update(commit="f" * 40, device="cuda:NVIDIA H200")
    shard.write_text(json.dumps(data))
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0  # the changed shard set is merged again
    man = _merged(out)["manifest"]
    sources = man["shard_sources"]
    assert [s["commit"] for s in sources] == [same["commit"], "f" * 40]
    assert sources[1]["shards"] == ["fgm/shard-1-of-2"] and "fgm/shard-0-of-2" in sources[0]["shards"] and "pgd/shard-1-of-2" in sources[0]["shards"]
    assert man["commit"] == code_commit() and man["device"] == f"{same['device']} + cuda:NVIDIA H200"
    assert _merged(out)["records"] == _reference(tmp / "ref-sources")["records"]


def test_a_merge_names_every_data_source_and_refuses_shards_of_different_data(env, capsys):
    """Shards that read the same data files from two places merge, and ``data.source`` names both
    (whichever shard comes first no longer decides it); shards of different data files are refused."""
    tmp, plan, _ = env
    out = tmp / "res-data"
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    first = _merged(out)["manifest"]["data"]
    shard = next(p for p in data_files(out / ".shards", "**/*.json") if "/fgm/" in p.as_posix() and "shard-1-of-2" in p.name)
    data = json.loads(shard.read_text())
    data["manifest"]["data"]["source"] = "/elsewhere/fashion-mnist"
    shard.write_text(json.dumps(data))
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    man = _merged(out)["manifest"]
    assert man["data"]["source"] == " + ".join(sorted([str(first["source"]), "/elsewhere/fashion-mnist"]))
    assert man["data"]["checksum"] == first["checksum"]
    by_source = {s["data_source"]: s["shards"] for s in man["shard_sources"]}
    assert by_source["/elsewhere/fashion-mnist"] == ["fgm/shard-1-of-2"] and "fgm/shard-0-of-2" in by_source[first["source"]]
    data["manifest"]["data"]["checksum"] = "0" * 64
    shard.write_text(json.dumps(data))
    before = (out / "fmnist").exists() and sorted(p.read_bytes() for p in data_files(out / "fmnist", "**/*.json"))
    capsys.readouterr()
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "different data files" in err and "Traceback" not in err
    assert sorted(p.read_bytes() for p in data_files(out / "fmnist", "**/*.json")) == before  # the merged file is kept


def test_merge_tolerates_float_jitter_of_the_clean_pass_but_not_other_verdicts(env, capsys):
    """Two jobs of one shard that score the same clean verdicts but round a float diagnostic of the
    clean pass differently (E-ABS's certified_l2 at another thread count) merge, keeping the first
    job's value; a clean verdict that differs is still refused."""
    tmp, plan, _ = env
    out = tmp / "res-jitter"
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    ref = _merged(out)
    (out / "fmnist" / "linf" / "cnn.json").unlink()
    shards = {a: next(p for p in data_files(out / ".shards", "**/*.json") if f"/{a}/" in p.as_posix() and "shard-1-of-2" in p.name) for a in ("pgd", "fgm")}
    for a, value in (("pgd", 0.8346749544143677), ("fgm", 0.8341423869132996)):  # the E-ABS pair the merge once refused
        data = json.loads(shards[a].read_text())
        for r in data["records"]:
            r["certified_l2"] = value
        shards[a].write_text(json.dumps(data))
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 0
    merged = _merged(out)
    half = len(ref["records"]) // 2
    assert [r["certified_l2"] for r in merged["records"][half:]] == [0.8346749544143677] * half
    assert [{k: v for k, v in r.items() if k != "certified_l2"} for r in merged["records"]] == ref["records"]
    # a clean verdict that differs between the jobs is refused, nothing is written
    (out / "fmnist" / "linf" / "cnn.json").unlink()
    data = json.loads(shards["fgm"].read_text())
    data["records"][0]["clean_correct"] = not data["records"][0]["clean_correct"]
    shards["fgm"].write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 2
    assert "jobs disagree on the clean pass" in capsys.readouterr().err and not (out / "fmnist" / "linf" / "cnn.json").exists()
    # so is a float diagnostic that moved beyond rounding
    data["records"][0]["clean_correct"] = not data["records"][0]["clean_correct"]
    for r in data["records"]:
        r["certified_l2"] = 0.9
    shards["fgm"].write_text(json.dumps(data))
    assert main(["sweep", str(plan), "--results-dir", str(out), "--quiet"]) == 2


def test_a_job_reuses_the_clean_pass_its_shard_recorded_and_only_a_matching_one(env, capsys):
    """The second attack's job of a shard takes the clean verdicts a finished job of that shard
    recorded (a GPU job then agrees with the CPU jobs of a randomized defense) instead of
    recomputing them, and says so; a file of another checkpoint or of other samples is passed over."""
    tmp, plan, _ = env
    out = tmp / "res-reuse"
    assert main(["sweep", str(plan), "--only", "pgd", "--results-dir", str(out), "--quiet"]) == 0
    pgd = {k: out / ".shards" / "fmnist" / "linf" / "cnn" / "quick" / "pgd" / f"shard-{k}-of-2.json" for k in (0, 1)}
    assert all(p.is_file() for p in pgd.values())
    # shard 0: a verdict no recomputation would give (flipped) proves reuse
    d0 = json.loads(pgd[0].read_text())
    flipped = not d0["records"][0]["clean_correct"]
    d0["records"][0]["clean_correct"] = flipped
    pgd[0].write_text(json.dumps(d0))
    # shard 1: the same flip, but the file names other samples: not reused
    d1 = json.loads(pgd[1].read_text())
    truth1 = d1["records"][0]["clean_correct"]
    d1["records"][0]["clean_correct"] = not truth1
    d1["records"][0]["index"] = -1
    pgd[1].write_text(json.dumps(d1))
    capsys.readouterr()
    assert main(["sweep", str(plan), "--only", "fgm", "--results-dir", str(out), "--quiet"]) == 2  # the tampered shard 1 does not merge
    assert "shard 1: jobs disagree on the clean pass" in capsys.readouterr().err
    fgm0 = json.loads(pgd[0].parent.parent.joinpath("fgm", "shard-0-of-2.json").read_text())
    fgm1 = json.loads(pgd[1].parent.parent.joinpath("fgm", "shard-1-of-2.json").read_text())
    assert fgm0["records"][0]["clean_correct"] is flipped and fgm0["manifest"]["clean_pass_from"] == "pgd/shard-0-of-2"
    assert fgm0["manifest"]["clean_wall_time_s"] == d0["manifest"]["clean_wall_time_s"]
    assert fgm1["records"][0]["clean_correct"] is truth1 and "clean_pass_from" not in fgm1["manifest"]
    # another checkpoint: recomputed
    fgm0_path = pgd[0].parent.parent / "fgm" / "shard-0-of-2.json"
    fgm0_path.unlink()
    d0["manifest"]["checkpoint_sha256"] = "0" * 64
    pgd[0].write_text(json.dumps(d0))
    assert main(["sweep", str(plan), "--only", "fgm", "--results-dir", str(out), "--quiet"]) == 0
    again = json.loads(fgm0_path.read_text())
    assert again["records"][0]["clean_correct"] is (not flipped) and "clean_pass_from" not in again["manifest"]


def test_only_runs_the_named_attacks_and_the_group_waits_for_the_rest(env, capsys):
    """`bench sweep --only pgd`: only PGD's jobs run and no merged file appears (the plan's FGM is
    still to come); a partial merge marks FGM pending; a plan copy listing PGD alone would have
    merged a "finished" file, and the partial merge of the full plan replaces it even though it
    is made of the same shard files."""
    tmp, plan, envs = env
    out = tmp / "res-only"
    assert main(["sweep", str(plan), "--only", "pgdd", "--results-dir", str(out)]) == 2
    assert "--only pgdd: not among the plan's attacks (fgm, pgd)" in capsys.readouterr().err
    assert main(["sweep", str(plan), "--only", "pgd", "--dry-run", "--results-dir", str(out)]) == 0
    table = capsys.readouterr().out
    assert "2 jobs" in table and "fgm" not in table
    assert main(["sweep", str(plan), "--only", "pgd", "--results-dir", str(out), "--quiet"]) == 0
    assert "running 2 on the local executor; 2 of other attacks left for later (--only pgd)" in capsys.readouterr().out
    assert {p.parent.name for p in _finished_shards(out)} == {"pgd"}
    assert not (out / "fmnist" / "linf" / "cnn.json").exists()
    subset = tmp / "pgd-only.toml"
    subset.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["pgd"]'))
    assert main(["sweep", str(subset), "--results-dir", str(out), "--quiet"]) == 0  # runs nothing, merges pgd as "finished"
    assert "pending_attacks" not in _merged(out)["manifest"]
    assert main(["sweep", str(plan), "--merge-partial", "--results-dir", str(out)]) == 0
    assert _merged(out)["manifest"]["pending_attacks"] == {"fgm": "0/2 shards"}


def test_time_limit_starts_only_jobs_that_fit_and_a_rerun_continues(env, monkeypatch, capsys):
    """Under --time-limit a job is started only if the latest finished shard of its attack says it
    fits; the jobs not started are neither failed nor lost, the group is not merged; the plan's budget
    check runs once the group is merged, block by block under the same limit."""
    tmp, plan, _ = env
    plan.write_text(PLAN + "check_budget = 20\n")
    res = tmp / "res"
    real = sweep.run_job
    ran = []

    def slow_on_paper(job, results_dir):  # the real job, recorded as if it had taken 10 hours
        path = Path(real(job, results_dir))
        data = json.loads(path.read_text())
        data["manifest"]["attacks"][job.attack]["wall_time_s"] = 36000.0
        path.write_text(json.dumps(data))
        ran.append(job.name)
        return str(path)

    monkeypatch.setattr(sweep, "run_job", slow_on_paper)
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet", "--time-limit", "1h"]) == 0
    out = capsys.readouterr().out
    # nothing measured before the first job: it starts; its shard then prices PGD shard 2 at ~10 h,
    # which is skipped, not the end of the run: FGM's first shard, priced from PGD's time per cost
    # unit, fits in the hour and runs; its own 10 h on paper then price FGM's second shard out too
    assert ran == ["fmnist/linf/cnn/quick/pgd/shard0", "fmnist/linf/cnn/quick/fgm/shard0"]
    assert "2 job(s) not started (pgd 1, fgm 1): the next job (fmnist/linf/cnn/quick/pgd/shard1) is estimated at 600 min" in out
    assert not (res / "fmnist" / "linf" / "cnn.json").exists() and "FAILED" not in out

    monkeypatch.setattr(sweep, "run_job", real)
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet", "--time-limit", "11h", "--only", "fgm"]) == 0
    out = capsys.readouterr().out
    assert "skipping 2 finished jobs; running 1" in out and "not started" not in out  # ~10 h fits in 11
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet", "--deadline", "2099-01-01T00:00"]) == 0
    out = capsys.readouterr().out
    assert "skipping 3 finished jobs; running 1" in out and "not started" not in out  # ~10 h fits before 2099
    merged = _merged(res)
    # the budget check runs under the limit too, block by block (the tiny CNN's blocks fit)
    assert "budget check of" in out and "pgd" in merged["manifest"]["budget_check"]["attacks"]


def test_time_gate_scales_from_the_latest_shard(tmp_path):
    raw = tomllib.loads(PLAN) | {"defenses": ["cnn", "adv-linf"], "shards": 2}
    jobs = {(j.defense, j.attack, j.shard): j for j in sweep.expand(sweep.parse_plan(raw))}

    def finish(job, seconds, created):
        p = job.partial_path(tmp_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        recs = [{"index": i} for i in range(job.start, job.stop)]
        p.write_text(json.dumps({"manifest": {"attacks": {job.attack: {"wall_time_s": seconds}}, "created": created}, "records": recs}))

    finish(jobs[("cnn", "pgd", 1)], 1000.0, "2026-01-02T00:00:00Z")  # the first shard, under load (file order: later)
    finish(jobs[("cnn", "pgd", 0)], 100.0, "2026-01-02T05:00:00Z")   # the latest
    now = [0.0]
    gate = sweep.time_gate(300.0, tmp_path, clock=lambda: now[0])
    todo = jobs[("cnn", "pgd", 1)]
    assert gate(todo) is None  # ~100 s from the latest shard fits in 300 s (the mean, 550 s, would not)
    now[0] = 250.0
    assert "estimated at 2 min (this attack on this defense, latest shard on this kind of device" in gate(todo) and "and 1 min are left" in gate(todo)
    assert gate(jobs[("adv-linf", "fgm", 0)]) is None  # nothing of adv-linf measured: started while time is left
    now[0] = 300.0
    assert gate(jobs[("adv-linf", "fgm", 0)]) == "the time limit is reached"


def test_time_gate_prices_a_job_from_shards_of_its_kind_of_device_scaled_to_its_threads(tmp_path, monkeypatch):
    """A shard computed on a GPU says nothing about a CPU job's time (stop 39: E-ABS noise shards took
    about 110 s on an H200 and 2135-2813 s on one CPU core), and a CPU shard's time scales by the
    torch threads it ran on / the threads the job will run on (`--threads auto`)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = tomllib.loads(PLAN) | {"shards": 2}
    jobs = {(j.attack, j.shard): j for j in sweep.expand(sweep.parse_plan(raw))}

    def finish(job, seconds, created, device):
        p = job.partial_path(tmp_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        recs = [{"index": i} for i in range(job.start, job.stop)]
        man = {"attacks": {job.attack: {"wall_time_s": seconds}}, "created": created, "device": device}
        p.write_text(json.dumps({"manifest": man, "records": recs}))

    finish(jobs[("pgd", 0)], 400.0, "2026-01-02T00:00:00Z", "cpu:x86_64:1 threads")
    finish(jobs[("fgm", 0)], 1.0, "2026-01-03T00:00:00Z", "cuda:NVIDIA H200")  # the latest, on a GPU
    finish(jobs[("fgm", 1)], 300.0, "2026-01-02T00:00:00Z", "cpu:x86_64:1 threads")
    assert sweep._device_of("cpu:x86_64:2 threads") == ("cpu", 2) and sweep._device_of("cuda:NVIDIA H100 80GB HBM3") == ("cuda", None)
    assert sweep._device_of("cpu:x86_64:1 threads + cuda:NVIDIA H200") == (None, None)
    # the dry run's core-hours: the GPU shard left out, a CPU shard at wall time x threads
    everything, cores = sweep._shard_rates(tmp_path), sweep._shard_rates(tmp_path, here=sweep.CORE)
    key = next(k for k in everything if k[2] == "fgm")
    assert len(everything[key]) == 2 and len(cores[key]) == 1 and cores[key][0] == max(everything[key])
    finish(jobs[("fgm", 1)], 300.0, "2026-01-02T00:00:00Z", "cpu:x86_64:2 threads")
    assert sweep._shard_rates(tmp_path, here=sweep.CORE)[key][0] == 2 * cores[key][0]
    # a job that started on 2 threads and ran most of its time on 1 (--threads auto beside a second process)
    p = jobs[("fgm", 1)].partial_path(tmp_path)
    p.write_text(json.dumps(json.loads(p.read_text()) | {"manifest": json.loads(p.read_text())["manifest"] | {"threads_mean": 1.25}}))
    assert sweep._shard_rates(tmp_path, here=sweep.CORE)[key][0] == pytest.approx(1.25 * cores[key][0])
    finish(jobs[("fgm", 1)], 300.0, "2026-01-02T00:00:00Z", "cpu:x86_64:1 threads")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        gate = sweep.time_gate(200.0, tmp_path, clock=lambda: 0.0)
        # FGM is priced from the CPU shard (300 s), not the GPU's 1 s
        assert "estimated at 5 min" in (gate(jobs[("fgm", 1)]) or "") and "scaled to 1 thread(s)" in gate(jobs[("fgm", 1)])
        torch.set_num_threads(2)  # the same shards on two threads: 150 s fits in 200 s; PGD's 400 s -> 200 s does not exceed it either
        assert gate(jobs[("fgm", 1)]) is None and gate(jobs[("pgd", 1)]) is None
        gate = sweep.time_gate(199.0, tmp_path, clock=lambda: 0.0)
        assert "estimated at 3 min" in (gate(jobs[("pgd", 1)]) or "") and "scaled to 2 thread(s)" in gate(jobs[("pgd", 1)])
    finally:
        torch.set_num_threads(threads)


def test_threads_mean_weights_each_thread_count_by_the_time_it_ran():
    import torch

    from harness.engine import threads

    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        start = threads.mark(clock=clock)
        assert start == (100.0, 2) and threads.mean_since(start, clock=clock) == 2.0  # no time has passed
        now[0] = 110.0
        threads.set_threads(1, clock=clock)  # 10 s on 2 threads, then 30 s on 1
        now[0] = 140.0
        assert threads.mean_since(start, clock=clock) == pytest.approx(50 / 40)
        assert threads.recorded(start, clock=clock) == 1.25
        later = threads.mark(clock=clock)  # a span that began after the change: 1 thread throughout
        now[0] = 200.0
        assert threads.recorded(later, clock=clock) == 1 and isinstance(threads.recorded(later, clock=clock), int)
    finally:
        torch.set_num_threads(before)


def test_a_job_whose_threads_change_while_it_runs_records_their_time_weighted_mean(env, monkeypatch):
    """The shard's device names the threads the job started with; ``threads_mean`` what it ran on."""
    import torch

    import harness.engine.runner as runner
    from harness.engine import threads

    tmp, plan, _ = env
    real = runner.attack
    calls = []

    def attack_then_drop(*a, **k):
        out = real(*a, **k)
        if not calls:  # after the first attack (a little time on 1 thread), the rest on 2
            threads.set_threads(2)
            time.sleep(0.3)
        calls.append(1)
        return out

    monkeypatch.setattr(runner, "attack", attack_then_drop)
    job = next(j for j in sweep.expand(sweep.load_plan(plan)) if j.attack == "fgm")
    try:
        sweep.run_job(job, str(tmp / "res"))
    finally:
        torch.set_num_threads(1)
    man = json.loads(job.partial_path(tmp / "res").read_text())["manifest"]
    assert man["device"].endswith(":1 threads") and 1.0 < man["threads_mean"] < 2.0
    # a job whose threads did not change records none
    other = next(j for j in sweep.expand(sweep.load_plan(plan)) if j.attack == "pgd")
    sweep.run_job(other, str(tmp / "res"))
    assert "threads_mean" not in json.loads(other.partial_path(tmp / "res").read_text())["manifest"]


def test_time_limit_bad_values_and_ray_are_user_errors(env, capsys):
    tmp, plan, _ = env
    for args, msg in ((["--time-limit", "soon"], "expected a duration like 2h30m"), (["--time-limit", "0"], "must be positive"),
                      (["--deadline", "2020-01-01T00:00"], "already past"), (["--deadline", "25:00"], "expected HH:MM"),
                      (["--deadline", "00:00"], "already past"),  # HH:MM is today's: a time after midnight needs its date, and the error gives it
                      (["--time-limit", "1h", "--executor", "ray"], "local executor only")):
        assert main(["sweep", str(plan), "--results-dir", str(tmp / "res"), "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
        assert ("tomorrow" in err) == (args == ["--deadline", "00:00"]), err
        if args == ["--deadline", "00:00"]:
            import datetime as dt
            assert f"for that time tomorrow give the date: {dt.date.today() + dt.timedelta(days=1)}T00:00" in err, err
    assert not (tmp / "res").exists()


def test_two_sweep_processes_on_one_plan_share_the_jobs(env):
    """Two `bench sweep` processes started together on one plan and results directory: each job is
    computed by exactly one of them (its lock file), the other goes on with the next; the merged file
    equals `bench run`'s and no lock is left behind."""
    tmp, plan, envs = env
    out = tmp / "res"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(plan), "--results-dir", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, env=dict(os.environ, **envs, BENCH_SWEEP_JOB_SLEEP="3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    ran = []
    for stdout, _ in logs:
        planned = int(stdout.split("finished jobs; running ")[1].split(" ")[0])
        elsewhere = int(stdout.split("job(s) left to another sweep process")[0].rsplit("sweep: ", 1)[1]) if "left to another sweep" in stdout else 0
        ran.append(planned - elsewhere)
    assert sum(ran) == 4, logs  # not 5 to 8: no job ran twice
    assert _merged(out)["records"] == _reference(tmp / "ref")["records"]
    assert not list(out.rglob("*.lock")) and not list(out.rglob("*.stale"))


def test_the_local_executor_fits_the_threads_before_it_prices_a_job(tmp_path):
    """`--threads auto` with a deadline: pace() comes before the gate, so a job is priced at the
    threads it will run on (before stop 48 the gate priced it at the threads of the job before)."""
    from harness.orchestration.executors.local import LocalExecutor

    jobs = sweep.expand(sweep.parse_plan(tomllib.loads(PLAN)))[:2]
    events: list[str] = []
    LocalExecutor().run(jobs, results_dir=str(tmp_path), max_retries=0, progress=False, log=lambda *_: None,
                        fn=lambda job, _: events.append("job"), gate=lambda job: events.append("gate"), pace=lambda: events.append("pace"))
    assert events == ["pace", "gate", "job"] * 2


def test_a_job_finished_or_held_by_another_sweep_is_skipped(env, monkeypatch, capsys):
    tmp, plan, _ = env
    res = tmp / "res"
    jobs = sweep.expand(sweep.load_plan(plan))
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet", "--only", "pgd"]) == 0
    capsys.readouterr()
    from harness.store import claims
    from harness.orchestration.executors.local import LocalExecutor

    fgm = [j for j in jobs if j.attack == "fgm"]
    held = claims.take(fgm[0].partial_path(res))  # "another sweep" (this test) runs fgm's first shard now
    status = [line.split("  ")[-1].strip() for line in sweep.format_job_table(jobs, res).splitlines()[2:6]]  # the dry run's job table
    assert status[:2] == ["done", "done"] and status[2].startswith(f"running (pid {os.getpid()} on ") and status[3] == "to run", status
    ran, logs = [], []
    # the job list as a sweep started before the pgd jobs finished would have it: pgd is finished by now
    failures = LocalExecutor().run(jobs, results_dir=str(res), max_retries=0, progress=False, log=logs.append,
                                   fn=lambda job, _: ran.append(job.name), claim=sweep.job_claim(res))
    held.release()
    assert failures == {} and ran == [fgm[1].name]
    assert logs == [f"sweep: 3 job(s) left to another sweep process: {jobs[0].name} finished it meanwhile"]
    assert not list(res.rglob("*.lock"))


def test_the_finished_attacks_of_a_partial_merge_are_checked_and_the_full_merge_keeps_the_check(env, capsys):
    """With check_budget, a group still running is checked when its file is a partial merge (so the
    check's blocks can fill a session no remaining job fits in): only its finished attacks; the full
    merge later replaces the file and keeps that check instead of redoing it."""
    tmp, plan, _ = env
    plan.write_text(PLAN + "check_budget = 20\n")
    res = tmp / "res"
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet", "--only", "pgd"]) == 0
    assert "budget check of" not in capsys.readouterr().out  # no file yet: nothing is merged unasked
    assert main(["sweep", str(plan), "--results-dir", str(res), "--merge-partial"]) == 0
    assert "budget_check" not in _merged(res)["manifest"]
    from harness.engine.sanity import verdict

    # the plan's check is on record, and the row reads as unreliable until it has run
    assert _merged(res)["manifest"]["budget_check_planned"] == {"n": 20, "attacks": None}
    assert "budget check pending: pgd" in verdict(_merged(res)).reasons
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet", "--only", "pgd"]) == 0
    out = capsys.readouterr().out
    assert "(a partial merge): fgm wait for their shards" in out
    partial = _merged(res)["manifest"]
    assert partial["pending_attacks"] == {"fgm": "0/2 shards"} and "fgm" not in partial["attacks"]
    pgd = partial["budget_check"]["attacks"]["pgd"]
    assert pgd["of"] == partial["attacks"]["pgd"]["spec_hash"] and "restarts_done" not in pgd  # finished

    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet"]) == 0
    full = _merged(res)["manifest"]
    assert "pending_attacks" not in full and "fgm" in full["attacks"]
    assert full["budget_check"]["attacks"]["pgd"] == pgd  # kept, not recomputed
    assert full["budget_check"]["n"] == 20
    assert full["budget_check_planned"] == {"n": 20, "attacks": None}
    assert not any(r.startswith("budget check pending") for r in verdict(_merged(res)).reasons)  # pgd checked (fgm has no step budget to double)


def test_a_rows_verdict_says_budget_check_pending_until_its_plans_check_has_run(env, capsys):
    """A sweep plan with check_budget records it in the merged file; before the check has run (a
    deadline, a killed session) the leaderboard must not call the row reliable. Adding the check to
    the plan of a row merged already records it in place, without rewriting the row."""
    from harness.engine.sanity import verdict

    tmp, plan, _ = env
    res = tmp / "res"
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet"]) == 0  # no check in the plan
    before = _merged(res)
    assert "budget_check_planned" not in before["manifest"] and verdict(before).reliable
    plan.write_text(PLAN + 'check_budget = 20\ncheck_attacks = ["pgd"]\n')
    assert main(["sweep", str(plan), "--results-dir", str(res), "--merge-partial"]) == 0
    after = _merged(res)
    assert after["manifest"]["budget_check_planned"] == {"n": 20, "attacks": ["pgd"]}
    assert after["records"] == before["records"] and after["manifest"]["created"] == before["manifest"]["created"]
    v = verdict(after)
    assert not v.reliable and v.reasons == ("budget check pending: pgd",)
    from harness.report.leaderboard import verdict_cell

    assert verdict_cell(v) == "**unreliable**: budget check pending: pgd"
    assert main(["sweep", str(plan), "--results-dir", str(res), "--quiet"]) == 0  # no job left: runs the check
    done = _merged(res)
    assert "restarts_done" not in done["manifest"]["budget_check"]["attacks"]["pgd"]
    assert not any(r.startswith("budget check pending") for r in verdict(done).reasons)


def test_two_processes_check_one_files_attacks_at_once_and_both_entries_land(env, monkeypatch):
    """The plan's budget check claims one attack at a time (`<file>.check-<attack>.lock`): while another
    process checks PGD, this one checks DeepFool, and each merges only its own entry into the file as
    it is on disk; the result equals one process checking both (`bench run --check-budget`)."""
    import harness.engine.runner as runner
    from harness.store import claims

    tmp, plan, _ = env
    plan.write_text(PLAN.replace('attacks = ["pgd", "fgm"]', 'attacks = ["pgd", "deepfool"]'))
    out, ref = tmp / "res-two", tmp / "res-one"
    for d in (out, ref):
        assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(d), progress=False, log=lambda *_: None) == 0
    cfg = RunConfig(defense="cnn", dataset="fmnist", norm="linf", n=40, seed=0, batch_size=20, attacks=("pgd", "deepfool"), results_dir=str(ref),
                    progress=False, device="cpu", train_if_missing=False, check_budget=20)
    one = json.loads(evaluate(cfg, log=lambda *_: None).read_text())["manifest"]["budget_check"]

    path = out / "fmnist" / "linf" / "cnn.json"
    stale = json.loads(path.read_text())  # a warning an older wording of the outcome checks recorded is replaced, not kept beside the new one
    stale["manifest"]["warnings"] = [*stale["manifest"].get("warnings", []), "budget check incomplete (pgd: 0 blocks of restart 3 of 5 done): old wording"]
    path.write_text(json.dumps(stale))
    other = claims.take(path.with_name(f"{path.name}.check-pgd"))  # "another sweep process" is checking PGD
    real, state = runner.attack, {"other": False}

    def meanwhile(ctx, job, clean, start=0):
        if job.key.startswith("deepfool check") and not state["other"]:  # the other process finishes PGD's check now
            state["other"] = True
            runner.check_file(RunConfig(**{**asdict(cfg), "attacks": ("pgd",), "results_dir": str(out)}), log=lambda *_: None)
        return real(ctx, job, clean, start)

    monkeypatch.setattr(runner, "attack", meanwhile)
    lines = []
    sweep.check_merged(sweep.expand(sweep.load_plan(plan)), out, n=20, progress=False, log=lines.append)
    other.release()
    assert state["other"] and any(f"pgd running in another sweep (pid {os.getpid()}" in line for line in lines), lines
    two = json.loads(path.read_text())["manifest"]["budget_check"]
    same = ("of", "spec_hash", "acc", "acc_doubled", "found_more", "drop", "saturated")
    assert list(two["attacks"]) == ["pgd", "deepfool"]
    for k in ("pgd", "deepfool"):
        assert {f: two["attacks"][k].get(f) for f in same} == {f: one["attacks"][k].get(f) for f in same}, k
    assert two["all"] == one["all"] and two["n"] == 20
    assert not list(out.rglob("*.lock"))
    # and the file's saturation warnings follow its entries
    from harness.engine.sanity import outcome_checks

    data = json.loads(path.read_text())
    assert [w for w in data["manifest"]["warnings"] if "budget" in w] == [w for w in outcome_checks(data) if "budget" in w]
    assert not any("old wording" in w for w in data["manifest"]["warnings"])


def test_a_sweep_beside_another_sweep_process_warns_when_its_threads_oversubscribe_the_cores(tmp_path):
    """Another live process's lock under the results directory, and more torch threads than cores are
    left: the sweep says so (stop 44 lost a third of an E-ABS restart's speed that way)."""
    from harness.store import claims

    res = tmp_path / "res"
    assert sweep.oversubscribed(res, threads=2, cores=2) is None  # no directory yet
    (res / "fmnist").mkdir(parents=True)
    assert sweep.oversubscribed(res, threads=2, cores=2) is None  # alone
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = res / "fmnist" / "linf" / "eabs.json.check-pgd.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": other.pid, "host": __import__("socket").gethostname(), "time": time.time()}))
        assert claims.neighbours(res) == [other.pid]
        warn = sweep.oversubscribed(res, threads=2, cores=2)
        assert warn and f"pid {other.pid}" in warn and "OMP_NUM_THREADS=1" in warn
        assert sweep.oversubscribed(res, threads=1, cores=2) is None
        assert sweep.oversubscribed(res, threads=2, cores=4) is None
        own = claims.take(res / "fmnist" / "l2" / "cnn.json")  # this process's own locks do not count
        assert claims.neighbours(res) == [other.pid]
        own.release()
    finally:
        other.kill()
        other.wait()
    assert claims.neighbours(res) == []  # its owner is gone: a stale lock


def test_threads_auto_takes_the_share_of_the_cores_the_other_sweep_processes_leave(tmp_path):
    """`--threads auto`: cores // (1 + other live sweep processes on this host under the results
    directory), set on torch and logged when it changes; the cores a finished process leaves are taken."""
    import torch

    res = tmp_path / "res"
    (res / "fmnist" / "linf").mkdir(parents=True)
    before = torch.get_num_threads()
    lines: list[str] = []
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        torch.set_num_threads(1)
        assert sweep.fit_threads(res, log=lines.append, cores=4) == 4 and torch.get_num_threads() == 4  # alone
        assert lines and "4 torch thread(s) (was 1): 0 other sweep process(es)" in lines[-1]
        lines.clear()
        assert sweep.fit_threads(res, log=lines.append, cores=4) == 4 and lines == []  # unchanged: nothing logged
        lock = res / "fmnist" / "linf" / "eabs.json.check-cw.lock"
        lock.write_text(json.dumps({"pid": other.pid, "host": __import__("socket").gethostname(), "time": time.time()}))
        assert sweep.fit_threads(res, log=lines.append, cores=4) == 2 and torch.get_num_threads() == 2
        assert f"sweep: 2 torch thread(s) (was 4): 1 other sweep process(es) on this host work on {res}; 4 cores" == lines[-1]
        assert sweep.fit_threads(res, log=lines.append, cores=1) == 1  # never below one thread
        other.kill()
        other.wait()
        assert sweep.fit_threads(res, log=lines.append, cores=2) == 2  # its owner is gone: its cores are free
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        torch.set_num_threads(before)


def test_a_sweep_with_threads_auto_fits_its_threads_before_each_job_and_each_check_block(env, monkeypatch):
    """`run_sweep(threads="auto")` calls :func:`sweep.fit_threads` once at the start, before every job
    it runs and before every block (or seed probe) of the budget check; a fixed count is set once."""
    import torch

    import harness.engine.runner as runner

    tmp, plan, _ = env
    plan.write_text(PLAN + "check_budget = 20\n")
    events: list[str] = []
    monkeypatch.setattr(sweep, "fit_threads", lambda results_dir, log=print, cores=None: events.append("pace") or 1)
    real_job, real_attack = sweep.run_job, runner.attack
    monkeypatch.setattr(sweep, "run_job", lambda job, results_dir: events.append("job") or real_job(job, results_dir))
    monkeypatch.setattr(runner, "attack", lambda *a, **k: events.append("attack") or real_attack(*a, **k))
    out = tmp / "res"
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lambda *_: None, threads="auto") == 0
    assert "restarts_done" not in _merged(out)["manifest"]["budget_check"]["attacks"]["pgd"]  # the check finished
    jobs = [i for i, e in enumerate(events) if e == "job"]
    assert events[0] == "pace" and len(jobs) == len(sweep.expand(sweep.load_plan(plan)))
    assert all(events[i - 1] == "pace" for i in jobs)  # before every job
    check = events[jobs[-1] + 1:]
    check = check[check.index("pace"):]  # the check's blocks: each run of attack calls follows a pace
    runs = "".join("p" if e == "pace" else "a" for e in check).split("p")[1:]
    assert len(runs) >= 2 and all(r in ("a", "aa") for r in runs), check  # a block, or a seed probe's two calls
    # a fixed count: set once, never fitted
    events.clear()
    threads = torch.get_num_threads()
    try:
        assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(tmp / "res2"), progress=False, log=lambda *_: None, threads=2) == 0
        assert torch.get_num_threads() == 2 and "pace" not in events
    finally:
        torch.set_num_threads(threads)


def test_threads_auto_refits_between_the_defenses_forwards_within_a_job(env, monkeypatch):
    """A process that took both cores alone gives one back while its job runs, not at its next job:
    with ``--threads auto`` the sweep fits its threads between the defense's forwards every
    ``eot.TICK_EVERY_S`` seconds (0 here: at every forward); without it nothing is called there."""
    import harness.engine.runner as runner
    from harness.engine import eot

    tmp, plan, _ = env
    monkeypatch.setattr(eot, "TICK_EVERY_S", 0.0)
    events: list[str] = []
    monkeypatch.setattr(sweep, "fit_threads", lambda results_dir, log=print, cores=None: events.append("pace") or 1)
    real_forward, real_job = eot.EOTModel.forward, sweep.run_job
    monkeypatch.setattr(eot.EOTModel, "forward", lambda self, x: events.append("forward") or real_forward(self, x))
    monkeypatch.setattr(sweep, "run_job", lambda job, results_dir: events.append("job") or real_job(job, results_dir))
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(tmp / "res"), progress=False, log=lambda *_: None, threads="auto") == 0
    first = events.index("job")
    inside = events[first + 1 : events.index("job", first + 1)]
    assert inside.count("forward") >= 2 and inside.count("pace") >= inside.count("forward") - 1, inside  # refitted within the job
    assert eot._tick is None  # the hook is removed when the sweep ends
    events.clear()
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(tmp / "res2"), progress=False, log=lambda *_: None) == 0
    assert "forward" in events and "pace" not in events


def test_between_forwards_calls_its_hook_at_most_every_interval_and_only_inside_the_block():
    import torch

    from defenses.base import Defense
    from harness.engine import eot

    class Const(Defense):
        name = "t-const"
        trainable = False

        def predict(self, x, *, generator=None):
            return torch.zeros(x.shape[0], 2)

    model = eot.EOTModel(Const(num_classes=2, input_shape=(1, 2, 2), dataset="fmnist"))
    x = torch.zeros(3, 1, 2, 2)
    calls = []
    with eot.between_forwards(lambda: calls.append(1), every_s=0.0):
        model(x)
        model(x)
    assert len(calls) == 2
    with eot.between_forwards(lambda: calls.append(1), every_s=3600.0):
        model(x)  # the interval starts when the block is entered: nothing yet
    model(x)
    assert len(calls) == 2


def test_check_block_on_the_cli_reaches_the_checks_of_the_sweep(env, monkeypatch):
    """`bench sweep --check-block N`: every budget check the sweep runs uses blocks of N samples."""
    import harness.engine.runner as runner

    tmp, plan, _ = env
    plan.write_text(PLAN + "check_budget = 20\n")
    sizes: list[int] = []
    real = runner.attack

    def spy(ctx, job, *a, **k):
        if ":restart" in job.hash:  # the check's attack calls
            sizes.append(ctx.cfg.batch_size)
        return real(ctx, job, *a, **k)

    monkeypatch.setattr(runner, "attack", spy)
    assert main(["sweep", str(plan), "--results-dir", str(tmp / "res"), "--quiet", "--check-block", "4"]) == 0
    # restart 1 in blocks of 4; later restarts pack the standing samples into blocks of up to 1.5 x 4 (without the option: 10)
    assert sizes[:5] == [4] * 5 and max(sizes) <= 6, sizes
    assert "restarts_done" not in _merged(tmp / "res")["manifest"]["budget_check"]["attacks"]["pgd"]


def test_threads_on_the_cli_takes_a_count_or_auto_and_refuses_the_rest(env, capsys):
    tmp, plan, _ = env
    for bad, why in ((["--threads", "0"], "a positive integer or auto"), (["--threads", "two"], "a positive integer or auto"),
                     (["--check-block", "0"], "positive integer"),
                     (["--threads", "auto", "--executor", "ray"], "--threads works with the local executor only")):
        assert main(["sweep", str(plan), "--results-dir", str(tmp / "res"), "--quiet", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp / "res").exists()  # refused before any work


def test_bench_run_and_a_sweeps_check_or_merge_never_write_one_file_at_once(env, capsys):
    """`bench run` holds its result file (`<file>.lock`) for the whole run and saves it whole after each
    attack, so a sweep's check block or merge written meanwhile would be lost: a run is refused while
    another run holds the file or a sweep checks one of its attacks (`<file>.check-<attack>.lock`), and
    a sweep neither checks nor merges a file a run holds. Nothing is left locked afterwards."""
    from harness.store import claims

    tmp, plan, _ = env
    out = tmp / "res"
    assert sweep.run_sweep(sweep.load_plan(plan), results_dir=str(out), progress=False, log=lambda *_: None) == 0
    path = out / "fmnist" / "linf" / "cnn.json"
    before = path.read_bytes()
    run = ["run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--suite", "quick", "--attacks", "pgd,fgm", "--n", "40",
           "--batch-size", "20", "--device", "cpu", "--results-dir", str(out), "--no-train", "--quiet", "--check-budget", "20"]

    checking = claims.take(path.with_name(f"{path.name}.check-pgd"))  # a sweep checks PGD's budget
    assert main(run) == 2
    err = capsys.readouterr().err.strip()
    assert "bench sweep is checking the budget of pgd" in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    checking.release()

    running = claims.take(path)  # another `bench run` writes the file
    assert main(run) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path} is being written by another process (pid {os.getpid()}" in err and len(err.splitlines()) == 1, err
    lines = []
    jobs = sweep.expand(sweep.load_plan(plan))
    assert sweep.check_merged(jobs, out, n=20, progress=False, log=lines.append) == []
    assert any("pgd not started: a bench run writes the file" in line for line in lines), lines
    shard = sorted((out / ".shards").glob("**/*.json"))[0]
    shard.write_text(json.dumps(json.loads(shard.read_text())))  # a shard redone: the group would be merged again
    assert sweep.merge(jobs, out, log=lines.append) == []
    assert any(f"{path} not merged: a bench run writes it" in line for line in lines), lines
    assert path.read_bytes() == before  # untouched while the run held it
    running.release()

    assert main(run) == 0  # free again: the run checks the budget
    capsys.readouterr()
    assert "budget_check" in json.loads(path.read_text())["manifest"]
    assert sweep.merge(jobs, out, log=lines.append) == [path]  # and the sweep merges the redone shard, keeping the check
    assert "budget_check" in json.loads(path.read_text())["manifest"]
    assert not list(out.rglob("*.lock"))
