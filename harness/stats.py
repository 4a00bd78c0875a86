"""Statistics over result files: per-sample outcomes, accuracies with Wilson intervals, McNemar tests.

Everything here works on the loaded result dicts of :mod:`harness.store.results` (``{"schema", "manifest",
"records"}``); ``results`` arguments are ``{defense: data}`` as returned by
:func:`harness.store.results.load_results`.

Row names used throughout: ``"clean"``, one per attack (the manifest's attack names), and ``"all"``
(worst case: a sample counts as correct only if it is clean-correct and correct under every attack
recorded in its file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar as _sm_mcnemar
from statsmodels.stats.proportion import proportion_confint

from harness.errors import BenchUserError

CLEAN = "clean"
ALL = "all"

#: Below this many discordant pairs McNemar uses the exact binomial test, otherwise chi-squared
#: with continuity correction.
EXACT_THRESHOLD = 25


# --------------------------------------------------------------------------------------------
# basic tests


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score confidence interval (level ``1 - alpha``) for the proportion ``k / n``.

    Raises ValueError for ``n <= 0``, ``k`` outside ``[0, n]`` or ``alpha`` outside ``(0, 1)``.
    """
    if isinstance(k, bool) or isinstance(n, bool):
        raise ValueError("k and n must be integers, not booleans")
    if int(n) != n or int(k) != k:
        raise ValueError(f"k and n must be integers (got k={k!r}, n={n!r})")
    k, n = int(k), int(n)
    if n <= 0:
        raise ValueError(f"Wilson interval needs n > 0 (got n={n})")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n] (got k={k}, n={n})")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1) (got {alpha})")
    lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
    return float(max(0.0, lo)), float(min(1.0, hi))


@dataclass(frozen=True)
class McNemarResult:
    """Outcome of a paired McNemar test.

    ``b01``: samples wrong under A and right under B; ``b10``: right under A, wrong under B;
    ``n``: number of paired samples; ``method``: ``"exact"`` (binomial) or ``"chi2"``
    (chi-squared with continuity correction).
    """

    b01: int
    b10: int
    n: int
    statistic: float
    pvalue: float
    method: str

    @property
    def discordant(self) -> int:
        """Number of discordant pairs ``b01 + b10``."""
        return self.b01 + self.b10


def _as_bool_vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (got shape {arr.shape})")
    if arr.dtype == bool:
        return arr
    if arr.size and (arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all()):
        raise ValueError(f"{name} must hold booleans (or 0/1)")
    return arr.astype(bool)


def mcnemar_test(a: Sequence[bool], b: Sequence[bool]) -> McNemarResult:
    """McNemar's test of paired per-sample correctness ``a`` vs ``b`` (same samples, same order).

    Uses the exact binomial test when there are fewer than 25 discordant pairs, otherwise the
    chi-squared statistic with continuity correction. With no discordant pairs p = 1 (exact).
    Raises ValueError when the arrays differ in length or are not boolean vectors.
    """
    a = _as_bool_vector(a, "a")
    b = _as_bool_vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs paired samples of equal length (got {a.size} and {b.size})")
    n11 = int(np.sum(a & b))
    b10 = int(np.sum(a & ~b))
    b01 = int(np.sum(~a & b))
    n00 = int(np.sum(~a & ~b))
    n = int(a.size)
    discordant = b01 + b10
    if discordant == 0:
        return McNemarResult(b01=0, b10=0, n=n, statistic=0.0, pvalue=1.0, method="exact")
    # Built by hand: a crosstab would drop an empty row/column.
    table = np.array([[n11, b10], [b01, n00]], dtype=np.int64)
    exact = discordant < EXACT_THRESHOLD
    if exact:
        res = _sm_mcnemar(table, exact=True)
    else:
        res = _sm_mcnemar(table, exact=False, correction=True)
    pvalue = float(min(1.0, max(0.0, res.pvalue)))
    return McNemarResult(
        b01=b01, b10=b10, n=n, statistic=float(res.statistic), pvalue=pvalue,
        method="exact" if exact else "chi2",
    )


# --------------------------------------------------------------------------------------------
# result files


def manifest(data: dict) -> dict:
    """The manifest of a loaded result file (BenchUserError when it has none)."""
    m = data.get("manifest") if isinstance(data, dict) else None
    if not isinstance(m, dict):
        raise BenchUserError("result file has no manifest; rerun with --fresh")
    return m


def attack_names(data: dict) -> list[str]:
    """Names of the finished attacks of a result file, in the manifest's (run) order."""
    attacks = manifest(data).get("attacks") or {}
    if not isinstance(attacks, dict):
        raise BenchUserError("result manifest 'attacks' must be a mapping name -> info")
    return list(attacks)


def attack_union(results: dict[str, dict]) -> list[str]:
    """Union of attack names over several result files, in first-seen manifest order."""
    seen: dict[str, None] = {}
    for data in results.values():
        for name in attack_names(data):
            seen.setdefault(name, None)
    return list(seen)


def per_sample_outcomes(data: dict) -> pd.DataFrame:
    """Per-sample correctness of one result file.

    Returns a boolean DataFrame indexed by sample index (test-set index, named ``"index"``) with
    columns ``"clean"``, one per finished attack in manifest order, and ``"all"`` (clean-correct
    and correct under every attack). Raises BenchUserError for malformed records.
    """
    names = attack_names(data)
    for reserved in (CLEAN, ALL):
        if reserved in names:
            raise BenchUserError(f"an attack may not be named {reserved!r}")
    records = data.get("records")
    if not isinstance(records, list):
        raise BenchUserError("result file has no 'records' list; rerun with --fresh")
    index: list[int] = []
    cols: dict[str, list[bool]] = {CLEAN: [], **{name: [] for name in names}}
    for rec in records:
        try:
            idx = int(rec["index"])
            clean = bool(rec["clean_correct"])
            per_attack = rec.get("attacks") or {}
            outcomes = [bool(per_attack[name]["correct"]) for name in names]
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchUserError(
                f"malformed record in result file ({type(exc).__name__}: {exc}); rerun the missing attacks or use --fresh"
            ) from None
        index.append(idx)
        cols[CLEAN].append(clean)
        for name, ok in zip(names, outcomes):
            # Robust under an attack implies clean-correct; enforce it in case a writer did not.
            cols[name].append(ok and clean)
    df = pd.DataFrame({k: np.asarray(v, dtype=bool) for k, v in cols.items()},
                      index=pd.Index(index, name="index", dtype="int64"))
    if df.index.has_duplicates:
        dups = sorted(set(df.index[df.index.duplicated()].tolist()))[:5]
        raise BenchUserError(f"result file has duplicate sample indices (e.g. {dups}); rerun with --fresh")
    df[ALL] = df.all(axis=1).astype(bool) if len(df.columns) else np.ones(len(df), dtype=bool)
    return df


def accuracy(k: int, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """``(k / n, lo, hi)`` with the Wilson interval; all NaN when ``n == 0``."""
    if n == 0:
        return math.nan, math.nan, math.nan
    lo, hi = wilson_interval(k, n, alpha)
    return k / n, lo, hi


def accuracy_table(results: dict[str, dict], alpha: float = 0.05) -> pd.DataFrame:
    """Tidy accuracy table: one row per (defense, row) with ``k`` correct of ``n``, ``acc = k/n``
    and the Wilson ``1 - alpha`` interval ``lo``/``hi``. Rows per defense: ``"clean"``, each of its
    attacks (manifest order), ``"all"``. Defenses appear in the order of ``results``."""
    rows = []
    for defense, data in results.items():
        outcomes = per_sample_outcomes(data)
        n = len(outcomes)
        for col in outcomes.columns:
            k = int(outcomes[col].sum())
            acc, lo, hi = accuracy(k, n, alpha)
            rows.append({"defense": defense, "row": col, "k": k, "n": n, "acc": acc, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["defense", "row", "k", "n", "acc", "lo", "hi"])


def paired_mcnemar(data_a: dict, data_b: dict, row: str = ALL) -> tuple[McNemarResult | None, str]:
    """McNemar test of two result files on ``row``, restricted to their shared sample indices.

    Returns ``(result, note)``; ``result`` is None (with the reason in ``note``) when a file lacks
    ``row`` or the two files share no samples. ``note`` is ``""`` when nothing is remarkable.
    """
    oa, ob = per_sample_outcomes(data_a), per_sample_outcomes(data_b)
    missing = [i for i, o in enumerate((oa, ob)) if row not in o.columns]
    if missing:
        return None, f"row {row!r} missing in " + " and ".join("AB"[i] for i in missing)
    shared = oa.index.intersection(ob.index, sort=False)
    if len(shared) == 0:
        return None, "no shared samples"
    res = mcnemar_test(oa.loc[shared, row].to_numpy(), ob.loc[shared, row].to_numpy())
    note = ""
    if len(shared) != len(oa) or len(shared) != len(ob):
        note = f"{len(shared)} shared of {len(oa)}/{len(ob)} samples"
    return res, note


def pairwise_mcnemar_long(results: dict[str, dict], row: str = ALL) -> pd.DataFrame:
    """All defense pairs (a before b in ``results`` order) with McNemar on ``row`` over the shared
    samples: columns a, b, n, b01, b10, statistic, pvalue, method, note (NaN/"" when untestable)."""
    names = list(results)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            res, note = paired_mcnemar(results[a], results[b], row)
            if res is None:
                out.append({"a": a, "b": b, "n": 0, "b01": 0, "b10": 0, "statistic": math.nan,
                            "pvalue": math.nan, "method": "", "note": note})
            else:
                out.append({"a": a, "b": b, "n": res.n, "b01": res.b01, "b10": res.b10,
                            "statistic": res.statistic, "pvalue": res.pvalue, "method": res.method,
                            "note": note})
    cols = ["a", "b", "n", "b01", "b10", "statistic", "pvalue", "method", "note"]
    return pd.DataFrame(out, columns=cols)


def pairwise_mcnemar(results: dict[str, dict], row: str = ALL) -> pd.DataFrame:
    """Symmetric defenses x defenses matrix of McNemar p-values on ``row``.

    Each pair is tested only on the sample indices common to both files. The diagonal is NaN, as
    is any pair with no shared samples (or a file lacking ``row``). ``df.attrs["n"]`` holds the
    matching matrix of sample counts used, ``df.attrs["method"]`` the method per pair and
    ``df.attrs["notes"]`` a list of ``"a vs b: note"`` strings.
    """
    names = list(results)
    pv = pd.DataFrame(np.nan, index=pd.Index(names, name="defense"), columns=names, dtype=float)
    nn = pd.DataFrame(0, index=pd.Index(names, name="defense"), columns=names, dtype="int64")
    method = pd.DataFrame("", index=pd.Index(names, name="defense"), columns=names, dtype=object)
    for name in names:
        nn.loc[name, name] = len(per_sample_outcomes(results[name]))
    notes = []
    for rec in pairwise_mcnemar_long(results, row).itertuples(index=False):
        for x, y in ((rec.a, rec.b), (rec.b, rec.a)):
            pv.loc[x, y] = rec.pvalue
            nn.loc[x, y] = rec.n
            method.loc[x, y] = rec.method
        if rec.note:
            notes.append(f"{rec.a} vs {rec.b}: {rec.note}")
    pv.attrs["n"] = nn
    pv.attrs["method"] = method
    pv.attrs["notes"] = notes
    pv.attrs["row"] = row
    return pv


def _norms(data: dict, attack: str) -> Iterable[tuple[bool, Any]]:
    for rec in data.get("records") or []:
        info = (rec.get("attacks") or {}).get(attack) or {}
        # minimization attacks record the smallest adversarial at any distance as "min_norm";
        # "norm" is the kept adversarial inside the eps-ball (None beyond it)
        yield bool(rec.get("clean_correct")), info["min_norm"] if "min_norm" in info else info.get("norm")


def adversarial_distances(data: dict, attack: str) -> np.ndarray:
    """Distances of the found adversarials of ``attack`` over clean-correct samples (no-find skipped):
    the record's ``min_norm`` (smallest verified adversarial at any distance, written for
    minimization attacks) when present, else its ``norm`` (inside the eps-ball)."""
    if attack not in attack_names(data):
        raise ValueError(f"attack {attack!r} not in result file (have: {', '.join(attack_names(data)) or 'none'})")
    return np.asarray([float(nv) for clean, nv in _norms(data, attack) if clean and nv is not None], dtype=float)


def distance_summary(data: dict, attack: str) -> tuple[float, float]:
    """``(mean, median)`` perturbation norm of the adversarials ``attack`` found, over samples
    that are clean-correct and have a found adversarial; ``(nan, nan)`` when there are none.
    Meant for minimization attacks (uses ``min_norm`` when recorded, see
    :func:`adversarial_distances`; thesis Table 2.6). Raises ValueError for an attack not in the file."""
    d = adversarial_distances(data, attack)
    if d.size == 0:
        return math.nan, math.nan
    return float(np.mean(d)), float(np.median(d))


#: a cell's verdicts count as unstable when a second, independent scoring of its candidates breaks
#: more than this share of all samples that the first scoring left robust (same 2 points as the
#: budget saturation check)
RECHECK_THRESHOLD = 0.02


def recheck_summary(data: dict) -> list[dict]:
    """Verdict stability of a randomized defense's result file, per attack (manifest order) and for
    "all": how many verdicts a second, independent scoring of the same candidates reverses
    (``recheck_flip`` of the records; :mod:`harness.engine.verify`). Per row: ``n`` samples,
    ``checked`` attacked samples that carry the flag (older files and shards do not), of them
    ``robust`` / ``robust_flipped`` (robust verdicts the second scoring breaks) and ``broken`` /
    ``broken_flipped``, ``acc`` (first scoring, over ``n``) and ``acc_both`` (robust under both
    scorings: ``acc`` less the flipped robust verdicts), ``unstable`` when the flipped robust verdicts
    exceed :data:`RECHECK_THRESHOLD` of ``n``. Empty when no record carries the flag."""
    names = attack_names(data)
    records = data.get("records") or []
    if not any("recheck_flip" in o for r in records for o in (r.get("attacks") or {}).values() if isinstance(o, dict)):
        return []
    n = len(records)
    rows = []
    all_ok = [bool(r.get("clean_correct")) for r in records]
    all_flip = [False] * n
    all_checked = list(all_ok)
    for name in names:
        row = {"attack": name, "n": n, "attacked": 0, "checked": 0, "robust": 0, "robust_flipped": 0, "broken": 0, "broken_flipped": 0, "correct": 0}
        for i, r in enumerate(records):
            o = (r.get("attacks") or {}).get(name) or {}
            ok = bool(r.get("clean_correct")) and bool(o.get("correct"))
            row["correct"] += ok
            all_ok[i] = all_ok[i] and ok
            if not r.get("clean_correct"):
                continue
            row["attacked"] += 1
            if "recheck_flip" not in o:
                all_checked[i] = False
                continue
            flip = bool(o["recheck_flip"])
            row["checked"] += 1
            row["robust" if ok else "broken"] += 1
            row["robust_flipped" if ok else "broken_flipped"] += flip
            all_flip[i] = all_flip[i] or (ok and flip)
        rows.append(row)
    robust_all = sum(all_ok)
    flipped_all = sum(1 for i in range(n) if all_ok[i] and all_flip[i])
    rows.append({"attack": ALL, "n": n, "attacked": sum(bool(r.get("clean_correct")) for r in records), "checked": sum(all_checked),
                 "robust": robust_all, "robust_flipped": flipped_all, "broken": None, "broken_flipped": None, "correct": robust_all})
    for row in rows:
        row["acc"] = row["correct"] / n if n else math.nan
        row["acc_both"] = (row["correct"] - row["robust_flipped"]) / n if n else math.nan
        row["unstable"] = bool(n) and row["robust_flipped"] > RECHECK_THRESHOLD * n
    return rows
