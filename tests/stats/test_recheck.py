"""Verdict stability of randomized defenses: a second, independent scoring of every verified
candidate (harness/engine/verify.py ``recheck``), summarised per attack (harness.stats.recheck_summary)
and marked in ``bench table``."""

from __future__ import annotations

import torch

from defenses.base import Defense
from harness import stats
from harness.engine.verify import verify
from harness.report.tables import UNSTABLE, format_report, render_recheck, render_table
from harness.store.results import write_result
from threat_models import ThreatModel


class CoinDefense(Defense):
    """Randomized: each prediction of a sample is class 0 with probability P (a coin from the generator), else class 1."""

    name = "test-coin"
    randomized = True
    trainable = False
    P = 0.5

    def __init__(self):
        super().__init__(num_classes=2, input_shape=(1, 4, 4), dataset="fmnist")

    def predict(self, x, *, generator=None):
        coin = (torch.rand(x.shape[0], generator=generator) < self.P).float()
        return torch.stack([coin, 1 - coin], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


class Fixed(CoinDefense):
    name, randomized = "test-fixed", False

    def predict(self, x, *, generator=None):
        return torch.tensor([[1.0, 0.0]]).expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def _coins(seed: int, n: int, calls: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) < CoinDefense.P for _ in range(calls)]


def test_a_second_scoring_flags_exactly_the_verdicts_it_reverses():
    n = 64
    x = torch.full((n, 1, 4, 4), 0.5)
    y = torch.zeros(n, dtype=torch.long)
    threat = ThreatModel(norm="linf", eps=0.1)
    cands = [x + 0.05, x - 0.05]  # two restarts, both at distance 0.05
    v = verify(CoinDefense(), x, y, cands, threat, generator=torch.Generator().manual_seed(1), draws=1, recheck=torch.Generator().manual_seed(2))
    first, second = _coins(1, n, 2), _coins(2, n, 2)  # one coin per sample per restart and scoring (True: class 0 = correct)
    robust = first[0] & first[1]
    assert torch.equal(v.correct, robust)
    kept = torch.where(~first[0], 0, 1)  # the first adversarial restart is kept (equal distances)
    kept_second = torch.where(kept == 0, second[0], second[1])
    expected = torch.where(robust, ~(second[0] & second[1]), kept_second)
    assert torch.equal(v.recheck_flip, expected)
    assert 0 < int(expected.sum()) < n  # both kinds of outcome occur for these seeds
    # the first scoring's verdicts do not depend on the recheck (its own generator)
    w = verify(CoinDefense(), x, y, cands, threat, generator=torch.Generator().manual_seed(1), draws=1)
    assert torch.equal(w.correct, v.correct) and w.recheck_flip is None


def test_deterministic_defenses_are_not_rechecked():
    x = torch.full((4, 1, 4, 4), 0.5)
    v = verify(Fixed(), x, torch.zeros(4, dtype=torch.long), [x], ThreatModel(norm="linf", eps=0.1),
               generator=torch.Generator().manual_seed(1), recheck=torch.Generator().manual_seed(2))
    assert v.recheck_flip is None and bool(v.correct.all())


def _result(flags: list[tuple[bool, bool, bool | None]], *, name="eabs") -> dict:
    """A result file whose records are (clean_correct, pgd correct, pgd recheck_flip or None = no flag)."""
    recs = []
    for i, (clean, ok, flip) in enumerate(flags):
        o = {"correct": clean and ok, "abstained": False, "norm": None if ok else 0.1}
        if clean and flip is not None:
            o["recheck_flip"] = flip
        recs.append({"index": i, "label": 0, "clean_correct": clean, "clean_abstained": False, "attacks": {"pgd": o}})
    man = {"defense": name, "dataset": "fmnist", "norm": "linf", "eps": 0.1, "eps_label": "0.1", "suite": "quick", "seed": 0, "n": len(recs),
           "sample_ids": list(range(len(recs))), "randomized": True, "score_draws": 5,
           "attacks": {"pgd": {"spec": {"name": "pgd"}, "spec_hash": "h", "eps": 0.1, "kind": "bounded", "budget": "1 steps x 1 restarts, EOT 5", "wall_time_s": 1.0}}}
    return {"schema": 1, "manifest": man, "records": recs}


def test_summary_counts_flips_per_attack_and_for_all():
    # 10 samples: 1 clean-wrong; 5 robust (2 flip), 3 broken (1 flips), 1 robust from an old shard (no flag)
    flags = [(False, False, None)] + [(True, True, f) for f in (True, True, False, False, False)] + [(True, False, f) for f in (True, False, False)] + [(True, True, None)]
    rows = {r["attack"]: r for r in stats.recheck_summary(_result(flags))}
    pgd = rows["pgd"]
    assert (pgd["n"], pgd["attacked"], pgd["checked"], pgd["robust"], pgd["robust_flipped"], pgd["broken"], pgd["broken_flipped"]) == (10, 9, 8, 5, 2, 3, 1)
    assert pgd["acc"] == 0.6 and pgd["acc_both"] == 0.4 and pgd["unstable"]
    assert (rows["all"]["robust"], rows["all"]["robust_flipped"], rows["all"]["checked"]) == (6, 2, 8)
    # stable verdicts: nothing flagged; no flags at all: no summary
    assert not stats.recheck_summary(_result([(True, True, False)] * 60 + [(True, True, True)]))[0]["unstable"]  # 1 of 61 < 2 points
    assert stats.recheck_summary(_result([(True, True, None)] * 3)) == []


def test_bench_table_marks_unstable_cells_and_lists_the_stability(tmp_path):
    flags = [(True, True, i < 3) for i in range(10)] + [(True, False, False)] * 10
    path = tmp_path / "fmnist" / "linf" / "eabs.json"
    write_result(path, _result(flags))
    from harness.store.results import load_results

    results = load_results(tmp_path, "fmnist", "linf")
    table = render_table(results)
    assert f"| PGD    | 50.0% [29.9, 70.1] {UNSTABLE} |" in table and f"| All L∞ | 50.0% [29.9, 70.1] {UNSTABLE} |" in table
    assert "verdict unstable" in table and f"| Clean  | 100.0% [83.9, 100.0] |" in table
    section = render_recheck(results)
    assert "3 of 10" in section and "0 of 10" in section and "35.0%" in section  # acc under both scorings: (10 - 3) / 20
    report = format_report(tmp_path, "fmnist", "linf")
    assert "Verdict stability" in report
    # the trust section warns (the verdict stays the first scoring's)
    assert "pgd: verdict unstable: a second, independent scoring of the same candidates breaks 3 of its 10 robust samples (50.0% -> 35.0%" in report
