"""Build result files in the schema of :mod:`harness.store.results` for the stats/tables tests."""

from __future__ import annotations

from pathlib import Path

from harness.store.results import SCHEMA_VERSION, result_path
from harness.store.results import write_result as _write_result_file

DEFAULT_BUDGETS = {"pgd": "80 steps x 5 restarts, EOT 1", "deepfool": "50 steps", "noise": "1000 draws",
                   "ddn": "1000 steps", "cw": "1000 steps x 9 binary search"}
MINIMIZATION = {"deepfool", "ddn", "cw"}


def fake_result(defense: str, dataset: str, norm: str, clean: list[bool], attacks: dict[str, list[bool]],
                *, eps: float = 0.1, norms: dict[str, list[float | None]] | None = None,
                sample_ids: list[int] | None = None, suite: str = "quick") -> dict:
    """A result dict: ``attacks[name][i]`` is the robust-correctness of sample i under ``name``
    (forced False when not clean-correct); norms default to ``eps`` for broken samples and None
    otherwise."""
    n = len(clean)
    ids = list(range(n)) if sample_ids is None else list(sample_ids)
    if len(ids) != n or any(len(v) != n for v in attacks.values()):
        raise ValueError("length mismatch in fake_result")
    norms = norms or {}
    records = []
    for i, sid in enumerate(ids):
        rec_attacks = {}
        for name, outcome in attacks.items():
            correct = bool(clean[i] and outcome[i])
            if name in norms:
                nv = norms[name][i]
            else:
                nv = None if correct or not clean[i] else eps
            rec_attacks[name] = {"correct": correct, "abstained": False, "norm": nv}
        records.append({"index": sid, "label": sid % 10, "clean_correct": bool(clean[i]),
                        "clean_abstained": False, "attacks": rec_attacks})
    man = {
        "defense": defense, "dataset": dataset, "norm": norm, "eps": eps, "eps_label": f"{eps:g}",
        "suite": suite, "seed": 0, "n": n, "sample_ids": ids, "device": "cpu", "versions": {},
        "commit": "abc123", "checkpoint_sha256": "0" * 64, "randomized": False, "gradient_policy": "exact",
        "attacks": {name: {"spec": {"name": name}, "spec_hash": f"h-{name}",
                           "kind": "minimization" if name in MINIMIZATION else "bounded",
                           "budget": DEFAULT_BUDGETS.get(name, "default"), "wall_time_s": 1.5}
                    for name in attacks},
        "clean_wall_time_s": 0.4, "created": "2026-11-23T08:00:00Z",
    }
    return {"schema": SCHEMA_VERSION, "manifest": man, "records": records}


def write_result(results_dir: str | Path, data: dict) -> Path:
    """Write ``data`` to its canonical path under ``results_dir``; returns the path."""
    m = data["manifest"]
    path = result_path(results_dir, m["dataset"], m["norm"], m["defense"])
    _write_result_file(path, data)
    return path


def bools(n_true: int, n: int) -> list[bool]:
    """``n_true`` Trues followed by Falses, length ``n``."""
    return [True] * n_true + [False] * (n - n_true)
