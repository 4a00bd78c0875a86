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
