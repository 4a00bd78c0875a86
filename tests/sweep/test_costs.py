"""`bench sweep --dry-run` prices every registered attack from its own declaration (``Attack.cost``)."""

from __future__ import annotations

import re

from harness.attacks import list_attacks
from harness.cli import main
from harness.orchestration.sweep import CLEAN_COST


def test_dry_run_prices_every_registered_attack(bench_env, capsys):
    attacks = list_attacks()
    assert {"pgd", "fgm", "deepfool", "ddn", "cw", "noise", "boundary", "es-pgd", "square", "transfer", "autoattack"} <= set(attacks)
    # one suite holding every registered attack (built-ins and installed plugins), for the norms it supports
    suite = bench_env / "all.toml"
    suite.write_text("masking_checks = false\n" + "".join(f'[[attack]]\nname = "{a.name}"\nnorms = {list(a.norms)!r}\n'.replace("'", '"') for a in attacks.values()))
    n = 30
    plan = bench_env / "plan.toml"
    plan.write_text(f'defenses = ["cnn"]\ndatasets = ["fmnist"]\nnorms = ["linf", "l2"]\nsuites = ["{suite}"]\nn = {n}\nbatch_size = {n}\n')
    assert main(["sweep", str(plan), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s*\d+\s+cnn\s", line)]
    priced = {(r[3], r[5]) for r in rows}
    expected = {(norm, a.name) for a in attacks.values() for norm in a.norms}
    assert priced == expected  # every attack, every norm it supports, one job each
    total = float(re.search(r"estimated cost ([\d,.]+) units", out).group(1).replace(",", ""))
    assert total == sum(n * (attacks[name].cost + CLEAN_COST) for _norm, name in expected)
    # the declarations that used to drift: ES-PGD and transfer have their own cost, not a default
    assert attacks["es-pgd"].cost == 1000 and attacks["transfer"].cost == 40 and attacks["fgm"].cost == 1


def test_cost_follows_the_suite_budget():
    """``cost_of`` scales the declared cost by the suite's steps / queries / draws, restarts and EOT;
    AutoAttack ``rand`` counts its own EOT instead of the harness's."""
    attacks = list_attacks()
    pgd, cw, noise, deepfool, aa = (attacks[k] for k in ("pgd", "cw", "noise", "deepfool", "autoattack"))
    assert pgd.cost_of({}) == pgd.cost  # the default budget is the declared cost
    assert pgd.cost_of({"steps": 80}, 2, eot=5) == pgd.cost * 2 * 2 * 5
    assert cw.cost_of({"binary_search_steps": 1, "steps": 50}) == cw.cost / 10
    assert noise.cost_of({"repeats": 20}) == noise.cost / 5
    assert deepfool.cost_of({"steps": 500}) == deepfool.cost  # it stops early: not priced by its steps
    assert aa.cost_of({"eot_iter": 5}, eot=5, randomized=True) == 2 * 100 * 5  # rand: APGD-CE + APGD-DLR x its EOT
    assert aa.cost_of({"n_iter": 50}, eot=1, randomized=False) == aa.cost / 2
    assert aa.cost_of({"version": "rand", "eot_iter": 2}) == 2 * 100 * 2


def test_a_bad_cost_reference_is_refused_at_registration():
    import pytest

    from harness.attacks.base import Attack

    class Bad(Attack):
        name, label, cost_reference = "bad-cost", "Bad", {"steps": 0}

    with pytest.raises(ValueError, match="cost_reference"):
        Bad.check_declaration()


def test_a_shard_at_another_budget_prices_a_job_by_its_cost_units(tmp_path):
    """A finished PGD-20 shard prices the paper suite's PGD-80 job at about 4x its time per sample."""
    import json
    import tomllib

    from harness.orchestration import sweep

    plan = sweep.parse_plan(tomllib.loads('defenses = ["cnn"]\ndatasets = ["fmnist"]\nnorms = ["linf"]\nsuites = ["paper-generative"]\nattacks = ["pgd"]\nn = 40\nbatch_size = 20\nshards = 2\n'))
    jobs = sweep.expand(plan)
    assert jobs[0].cost == attacks_cost("pgd", {"steps": 80})
    done = jobs[0].partial_path(tmp_path)
    done.parent.mkdir(parents=True)
    spec = {"name": "pgd", "params": {"steps": 20}, "restarts": 1, "eot": 1}
    # 20 samples in 404 s: 20.2 s per sample = (20 units of PGD-20 + 0.2 of the clean pass) x 1 s per unit
    done.write_text(json.dumps({"manifest": {"attacks": {"pgd": {"spec": spec, "wall_time_s": 400.0}}, "clean_wall_time_s": 4.0}, "records": [{"index": i} for i in range(20)]}))
    assert sweep._shard_rates(tmp_path) == {("fmnist", "cnn", "pgd"): [1.0]}
    out = sweep.measured_estimate(jobs[1:], tmp_path)
    row = next(line for line in out.splitlines() if line.startswith("cnn"))
    # shard 2's 20 samples at PGD-80: 20 x (80 + 0.2) s = 0.45 h (unscaled, per sample, it would be 0.11 h)
    assert row.split()[4] == "0.4" and "this attack on this defense" in row


def attacks_cost(name, params):
    return list_attacks()[name].cost_of(params)
