"""``bench export robustbench``: RobustBench leaderboard entries from our result files, plus what they cannot say.

RobustBench (Croce et al. 2021) lists a model through ``model_info/<dataset>/<threat model>/<Model>.json``
with the fields :data:`FIELDS` (accuracies as percent strings with two decimals, ``eps`` as a string
such as ``"8/255"`` or ``"0.1"``) and the optional ``external``, ``footnote`` and ``unreliable``. Its
robust accuracy is AutoAttack's (Croce & Hein 2020). This module writes one such entry per result file
of a (dataset, norm) that ran AutoAttack -- AutoAttack row -> ``autoattack_acc``, clean -> ``clean_acc``
-- and next to it a sidecar ``<Model>.bench.json`` with what the format has no field for: n, Wilson 95%
intervals of every row, our verified per-sample worst case over all attacks ("All"), the McNemar test
of All against AutoAttack alone, the trust verdict and the sanity warnings (:mod:`harness.engine.sanity`).

``unreliable: true`` (with a ``footnote`` and ``external`` = our All accuracy) is set when All is
significantly below AutoAttack alone: McNemar's test (:func:`harness.stats.mcnemar_test`; exact
binomial below 25 discordant pairs) on the paired per-sample outcomes of the file's samples, p < 0.01.
That is AutoAttack over-reporting robustness, as ``docs/smoothing.md`` shows for variational
smoothing. All is taken over the attacks at the file's own eps (eps-sweep keys ``name@eps`` are left out).

Entries are a pure function of the result files (plus the optional thesis table for ``reported``):
no timestamps, fixed key order.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import stats
from harness.errors import BenchUserError
from harness.store.results import atomic_write_json, load_results
from harness.engine.sanity import verdict

#: the fields of every RobustBench ``model_info`` entry, in its order
FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture", "eps",
          "clean_acc", "reported", "autoattack_acc")
#: optional fields: ``unreliable`` is always written, ``external`` / ``footnote`` only for an unreliable entry
OPTIONAL = ("external", "footnote", "unreliable")
THREAT_DIRS = {"linf": "Linf", "l2": "L2"}
AUTOATTACK = "autoattack"
ALPHA = 0.01
SIDECAR_SUFFIX = ".bench.json"

#: architecture strings of the built-in defenses (RobustBench's ``architecture`` field)
_ARCHITECTURES = {
    "table2.1": "CNN (Ju 2021 thesis Table 2.1)",
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
}
_GENERATIVE = {
    "abs": "ABS: one VAE per class (Ju 2021 thesis Table 2.1)",
    "eabs": "E-ABS: encoder + one decoder per class (Ju 2021 thesis Table 2.1)",
}


def pct(k: int, n: int) -> str:
    """``k / n`` as RobustBench writes accuracies: percent with two decimals (``"59.53"``)."""
    return f"{100.0 * k / n:.2f}"


def eps_string(manifest: dict) -> str:
    """RobustBench's ``eps`` string: the harness's label (``"8/255"``, ``"0.1"``, ``"1.5"``), else ``f"{eps:g}"``."""
    label = str(manifest.get("eps_label") or "").strip()
    return label or f"{float(manifest['eps']):g}"


def model_name(stem: str, manifest: dict) -> str:
    """File name of the entry: the RobustBench name for ``robustbench:<Name>`` results, else the result file's stem."""
    defense = str(manifest.get("defense", stem))
    if defense.startswith("robustbench:") and stem == defense.replace(":", "-"):
        return defense.split(":", 1)[1]
    return stem


def _robustbench_entry(manifest: dict):
    defense = str(manifest.get("defense", ""))
    if not defense.startswith("robustbench:"):
        return None
    from defenses.robustbench import ENTRIES

    return ENTRIES.get(defense.split(":", 1)[1])


def architecture(defense: str, manifest: dict) -> str:
    entry = _robustbench_entry(manifest)
    if entry is not None:
        return entry.architecture
    cfg = manifest.get("defense_config") or {}
    if cfg.get("architecture"):
        return str(cfg["architecture"])
    if defense in _GENERATIVE:
        return _GENERATIVE[defense]
    arch = cfg.get("arch")
    return _ARCHITECTURES.get(str(arch), str(arch)) if arch else "unknown"


def thesis_reported(path: str | os.PathLike | None, defense: str, norm: str, eps: float) -> str | None:
    """The robust accuracy the thesis reports ("all" row of ``docs/thesis_<dataset>.toml``) for ``defense``, or None."""
    if path is None or not Path(path).is_file():
        return None
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
        raise BenchUserError(f"thesis table {path} cannot be read ({exc})") from None
    names = table.get("defenses") or []
    block = table.get(norm) or {}
    if defense not in names or "all" not in block or not math.isclose(float(block.get("eps", math.nan)), eps, rel_tol=1e-9):
        return None
    value = block["all"][names.index(defense)]
    return f"{float(value):.2f}"


@dataclass(frozen=True)
class ExportedEntry:
    """One exported model: RobustBench's entry, our sidecar, and where they go."""

    model: str
    entry: dict[str, Any]
    sidecar: dict[str, Any]


def _row(outcomes, col: str) -> dict[str, Any]:
    n = len(outcomes)
    k = int(outcomes[col].sum())
    acc, lo, hi = stats.accuracy(k, n)
    return {"k": k, "n": n, "acc": acc, "lo": lo, "hi": hi}


def build_entry(defense: str, data: dict, *, thesis: str | os.PathLike | None = None, result_file: str | None = None) -> ExportedEntry:
    """The RobustBench entry and sidecar of one result file (``defense`` is its file stem).

    Raises ValueError when the file has no AutoAttack row or no samples (RobustBench needs ``autoattack_acc``).
    """
    man = stats.manifest(data)
    outcomes = stats.per_sample_outcomes(data)
    n = len(outcomes)
    if n == 0:
        raise ValueError("no samples")
    if AUTOATTACK not in outcomes.columns:
        raise ValueError(f"no AutoAttack row (suite {man.get('suite')!r} ran {', '.join(stats.attack_names(data)) or 'nothing'}); rerun with a suite that has autoattack, e.g. --suite paper")
    attacks = [a for a in stats.attack_names(data) if "@" not in a]
    worst = outcomes[[stats.CLEAN, *attacks]].all(axis=1)
    outcomes = outcomes.assign(**{stats.ALL: worst})
    test = stats.mcnemar_test(outcomes[AUTOATTACK].to_numpy(), outcomes[stats.ALL].to_numpy())
    aa_k, all_k = int(outcomes[AUTOATTACK].sum()), int(outcomes[stats.ALL].sum())
    unreliable = bool(test.pvalue < ALPHA and all_k < aa_k)

    entry_info = _robustbench_entry(man)
    info = dict(entry_info.info) if entry_info is not None else {}
    norm = str(man.get("norm"))
    reported = (info.get("reported") or {}).get(norm) if entry_info is not None else thesis_reported(thesis, defense, norm, float(man["eps"]))
    randomized = bool(man.get("randomized"))
    entry: dict[str, Any] = {
        "link": str(info.get("link", "")),
        "name": str(info.get("name") or man.get("paper") or defense),
        "authors": str(info.get("authors", "")),
        "additional_data": bool(info.get("additional_data", False)),
        "number_forward_passes": int(man.get("score_draws") or 1) if randomized else 1,
        "dataset": str(man.get("dataset")),
        "venue": str(info.get("venue", "")),
        "architecture": architecture(defense, man),
        "eps": eps_string(man),
        "clean_acc": pct(int(outcomes[stats.CLEAN].sum()), n),
        "reported": reported if reported is not None else "",
        "autoattack_acc": pct(aa_k, n),
    }
    labels = ", ".join(attacks)
    if unreliable:
        entry["external"] = pct(all_k, n)
        entry["footnote"] = (
            f"AutoAttack alone over-reports robustness here: the per-sample worst case over all {len(attacks)} attacks of bench's "
            f"'{man.get('suite')}' suite ({labels}) leaves {pct(all_k, n)}% robust, vs {pct(aa_k, n)}% under AutoAttack "
            f"(McNemar {test.method} p = {test.pvalue:.2g} on the same {n} samples; {test.b10} broken only by other attacks)."
        )
    entry["unreliable"] = unreliable

    v = verdict(data)
    rows = {stats.CLEAN: _row(outcomes, stats.CLEAN), **{a: _row(outcomes, a) for a in attacks}, stats.ALL: _row(outcomes, stats.ALL)}
    sidecar = {
        "robustbench_entry": f"{model_name(defense, man)}.json",
        "result_file": result_file,
        "defense": man.get("defense"),
        "defense_options": man.get("defense_options") or {},
        "dataset": man.get("dataset"),
        "norm": norm,
        "threat_model": THREAT_DIRS.get(norm, norm),
        "eps": man.get("eps"),
        "n": n,
        "seed": man.get("seed"),
        "suite": man.get("suite"),
        "commit": man.get("commit"),
        "checkpoint_sha256": man.get("checkpoint_sha256"),
        "randomized": randomized,
        "gradient_policy": man.get("gradient_policy"),
        "interval": "Wilson 95%",
        "accuracy": rows,
        "all": {**rows[stats.ALL], "attacks": attacks},
        "autoattack": {**rows[AUTOATTACK], "budget": ((man.get("attacks") or {}).get(AUTOATTACK) or {}).get("budget")},
        "all_vs_autoattack": {
            "test": "McNemar", "method": test.method, "pvalue": test.pvalue, "alpha": ALPHA,
            "autoattack_robust_all_broken": test.b10, "all_robust_autoattack_broken": test.b01,
            "significant": unreliable,
        },
        "reported_source": None if reported is None else ("RobustBench model_info" if entry_info is not None else str(thesis)),
        "verdict": {"reliable": v.reliable, "checked": v.checked, "reasons": list(v.reasons)},
        "warnings": list(v.warnings),
    }
    return ExportedEntry(model_name(defense, man), entry, sidecar)


def export_robustbench(results_dir: str | os.PathLike, dataset: str, norm: str, out_dir: str | os.PathLike, *,
                       thesis: str | os.PathLike | None = None) -> tuple[list[tuple[ExportedEntry, Path]], list[tuple[str, str]]]:
    """Write ``<out_dir>/<dataset>/<Linf|L2>/<Model>.json`` (+ ``<Model>.bench.json``) for every result file.

    Returns the written entries with their paths, and the skipped result files with the reason.
    """
    if norm not in THREAT_DIRS:
        raise BenchUserError(f"unknown norm {norm!r}; use one of {', '.join(THREAT_DIRS)}")
    results = load_results(results_dir, dataset, norm)
    if not results:
        raise BenchUserError(f"no results for {dataset}/{norm} in {results_dir}; run `bench run --dataset {dataset} --norm {norm} ...` first")
    folder = Path(out_dir) / dataset / THREAT_DIRS[norm]
    written, skipped = [], []
    seen: dict[str, str] = {}
    for defense, data in results.items():
        rel = Path(results_dir, dataset, norm, f"{defense}.json").as_posix()
        try:
            ex = build_entry(defense, data, thesis=thesis, result_file=rel)
        except ValueError as exc:
            skipped.append((defense, str(exc)))
            continue
        if ex.model in seen:
            raise BenchUserError(f"result files {seen[ex.model]} and {defense} both export as {ex.model}.json")
        seen[ex.model] = defense
        path = folder / f"{ex.model}.json"
        atomic_write_json(path, ex.entry)
        atomic_write_json(folder / f"{ex.model}{SIDECAR_SUFFIX}", ex.sidecar)
        written.append((ex, path))
    return written, skipped


def format_summary(written: list[tuple[ExportedEntry, Path]], skipped: list[tuple[str, str]]) -> str:
    """A plain-text table of what was exported (for the CLI)."""
    from tabulate import tabulate

    rows = []
    for ex, path in written:
        s = ex.sidecar["all_vs_autoattack"]
        rows.append([ex.model, ex.entry["clean_acc"], ex.entry["autoattack_acc"], f"{100 * ex.sidecar['all']['acc']:.2f}",
                     f"{s['pvalue']:.2g}", "yes" if ex.entry["unreliable"] else "no", ex.sidecar["n"], path.as_posix()])
    lines = [tabulate(rows, headers=["Model", "Clean %", "AutoAttack %", "All %", "p (All vs AA)", "unreliable", "n", "entry"], tablefmt="github", disable_numparse=True)]
    for defense, reason in skipped:
        lines.append(f"skipped {defense}: {reason}")
    return "\n".join(lines)
