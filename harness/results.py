"""Result files: one JSON per (dataset, norm, defense), written atomically, resumable per attack.

Layout: ``<results_dir>/<dataset>/<norm>/<defense>.json``::

    {
      "schema": 1,
      "manifest": {
        "defense": "cnn", "dataset": "fmnist", "norm": "linf",
        "eps": 0.1, "eps_label": "0.1", "suite": "quick", "seed": 0,
        "n": 200, "sample_ids": [...],            # test-set indices, same order as records
        "device": "cpu", "versions": {...}, "commit": "abc123",
        "checkpoint_sha256": "...", "randomized": false, "gradient_policy": "...",
        "attacks": {                                 # one entry per finished attack, in run order
          "pgd": {"spec": {...AttackSpec...}, "spec_hash": "...", "kind": "bounded"|"minimization",
                  "budget": "80 steps x 5 restarts", "wall_time_s": 12.3}
        },
        "clean_wall_time_s": 0.4, "created": "2026-11-23T08:00:00Z",
        "budget_check": {...}                        # optional: bench run --check-budget (harness/saturation.py)
      },
      "records": [
        {"index": 12, "label": 3, "clean_correct": true, "clean_abstained": false,
         "attacks": {"pgd": {"correct": false, "abstained": false, "norm": 0.1}}}
      ]
    }

``correct`` under an attack means: clean-correct and no verified adversarial example was found
(abstaining counts as an error). ``norm`` is the perturbation norm (in the file's threat-model
norm) of the best verified adversarial example, or ``null`` when none was found.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import BenchUserError

SCHEMA_VERSION = 1


def result_path(results_dir: str | os.PathLike, dataset: str, norm: str, defense: str) -> Path:
    """Where the result file of one (dataset, norm, defense) lives."""
    return Path(results_dir) / dataset / norm / f"{defense}.json"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_result(path: str | os.PathLike) -> dict:
    """Load and sanity-check one result file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise BenchUserError(f"result file {path} is not valid JSON ({exc}); delete it or rerun with --fresh") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION or "records" not in data:
        raise BenchUserError(f"result file {path} has an unknown format (expected schema {SCHEMA_VERSION}); rerun with --fresh")
    return data


def load_results(results_dir: str | os.PathLike, dataset: str, norm: str) -> dict[str, dict]:
    """All result files of one (dataset, norm), keyed by defense name, sorted by name."""
    folder = Path(results_dir) / dataset / norm
    if not folder.is_dir():
        return {}
    return {p.stem: load_result(p) for p in sorted(folder.glob("*.json"))}


def list_result_sets(results_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """Every (dataset, norm) pair that has at least one result file, sorted (norm folders only:
    ``results/<dataset>/neat/`` and other result kinds are skipped)."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    pairs = {(p.parent.parent.name, p.parent.name) for p in root.glob("*/*/*.json") if p.parent.name in ("linf", "l2")}
    return sorted(pairs)
