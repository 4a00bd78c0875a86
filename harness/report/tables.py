"""Thesis-style text tables of result files: accuracies with Wilson intervals, McNemar p-values,
attack budgets. ``results`` arguments are ``{defense: data}`` from
:func:`harness.store.results.load_results`."""

from __future__ import annotations

import math
import os

import pandas as pd
from tabulate import tabulate

from harness import stats
from harness.errors import BenchUserError
from harness.store.results import load_results, pending_attacks
from harness.engine.saturation import attack_drop, so_far, unsaturated

#: Defenses in this order come first in every table; the rest follow alphabetically.
CANONICAL_DEFENSE_ORDER = ("cnn", "adv-linf", "adv-l2", "abs", "eabs")

_DEFENSE_NAMES = {"cnn": "CNN", "adv-linf": "Adv-L∞", "adv-l2": "Adv-L2", "abs": "ABS", "eabs": "E-ABS"}
_NORM_NAMES = {"linf": "L∞", "l2": "L2"}
_FORMATS = ("github", "plain")
MISSING = "—"
UNSATURATED = "‡"  # marks an attack whose doubled budget breaks more than 2 points of samples the suite's budget left robust
UNSTABLE = "§"  # marks a randomized defense's cell whose verdicts a second scoring reverses (stats.recheck_summary)
SIGNIFICANCE = 0.01


def defense_order(names) -> list[str]:
    """Stable display order: the canonical defenses (cnn, adv-linf, adv-l2, abs, eabs) first, then the rest alphabetically."""
    names = list(dict.fromkeys(names))
    head = [d for d in CANONICAL_DEFENSE_ORDER if d in names]
    return head + sorted(d for d in names if d not in CANONICAL_DEFENSE_ORDER)


def ordered(results: dict[str, dict]) -> dict[str, dict]:
    """``results`` re-keyed in :func:`defense_order`."""
    return {d: results[d] for d in defense_order(results)}


def defense_label(name: str) -> str:
    """Display name of a defense (``adv-linf`` -> ``Adv-L∞``); unknown names unchanged."""
    return _DEFENSE_NAMES.get(name, name)


def attack_label(name: str) -> str:
    """Display name of an attack: its declared ``label`` (``pgd`` -> ``PGD``, ``deepfool`` -> ``DeepFool``);
    attacks not registered here (a plugin not installed) upper-cased.

    One eps of an eps sweep (attack key ``<name>@<eps>``, see :mod:`harness.engine.runner`) gets its eps:
    ``fgm@0.2`` -> ``FGM ε=0.2``.
    """
    if "@" in name:
        base, eps = name.split("@", 1)
        return f"{attack_label(base)} ε={eps}"
    from harness.attacks import find_attack

    attack = find_attack(name)
    return attack.label if attack is not None else name.upper()


def norm_label(norm: str) -> str:
    """Display name of a threat-model norm (``linf`` -> ``L∞``, ``l2`` -> ``L2``)."""
    return _NORM_NAMES.get(norm, norm.upper())


def row_label(row: str, norm: str) -> str:
    """Display name of a table row: ``Clean``, an attack label, or ``All L∞`` / ``All L2``."""
    if row == stats.CLEAN:
        return "Clean"
    if row == stats.ALL:
        return f"All {norm_label(norm)}"
    return attack_label(row)


def format_pct(acc: float) -> str:
    """``0.91`` -> ``91.0%``; NaN -> ``—``."""
    return MISSING if acc is None or math.isnan(acc) else f"{100 * acc:.1f}%"


def format_cell(acc: float, lo: float, hi: float) -> str:
    """Accuracy with its interval in percentage points: ``91.0% [89.1, 92.6]``; NaN -> ``—``."""
    if acc is None or math.isnan(acc):
        return MISSING
    return f"{100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def format_pvalue(p: float) -> str:
    """``<0.001``, ``0.023``, ... with ``*`` appended when p < 0.01; NaN -> ``—``."""
    if p is None or math.isnan(p):
        return MISSING
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text + ("*" if p < SIGNIFICANCE else "")


def _check_fmt(fmt: str) -> str:
    if fmt not in _FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(_FORMATS)}")
    return fmt


def _check_results(results: dict[str, dict]) -> None:
    if not results:
        raise ValueError("no result files given")


def _common(results: dict[str, dict], key: str):
    values = {repr(stats.manifest(d).get(key)): stats.manifest(d).get(key) for d in results.values()}
    return next(iter(values.values())) if len(values) == 1 else None


def header_line(results: dict[str, dict]) -> str:
    """One line naming dataset, norm, eps label and n, with notes where the files disagree
    (different eps, n, sample sets or attack sets)."""
    _check_results(results)
    res = ordered(results)
    mans = {d: stats.manifest(data) for d, data in res.items()}
    dataset = _common(res, "dataset")
    norm = _common(res, "norm")
    eps = _common(res, "eps_label") or _common(res, "eps")
    outcomes = {d: stats.per_sample_outcomes(data) for d, data in res.items()}
    ns = {d: len(o) for d, o in outcomes.items()}
    swept = any("@" in name for data in res.values() for name in stats.attack_names(data))
    parts = [
        f"dataset {dataset if dataset is not None else 'mixed'}",
        f"norm {norm_label(norm) if norm else 'mixed'}",
        f"eps {eps if eps is not None else 'mixed'}" + (" (a row \"… ε=e\" uses eps e)" if swept else ""),
    ]
    if len(set(ns.values())) == 1:
        parts.append(f"n = {next(iter(ns.values()))}")
    else:
        parts.append("n = " + ", ".join(f"{defense_label(d)} {n}" for d, n in ns.items()))
    notes = []
    if eps is None:
        notes.append("eps differs: " + ", ".join(f"{defense_label(d)} {m.get('eps_label', m.get('eps'))}" for d, m in mans.items()))
    sets = {d: frozenset(o.index.tolist()) for d, o in outcomes.items()}
    if len(set(sets.values())) > 1:
        shared = frozenset.intersection(*sets.values())
        notes.append(f"defenses were evaluated on different sample sets ({len(shared)} shared)")
    attack_sets = {tuple(stats.attack_names(data)) for data in res.values()}
    if len(attack_sets) > 1:
        notes.append("defenses ran different attacks; each 'All' row covers that defense's own attacks")
    suites = {str(m.get("suite")) for m in mans.values()}
    if len(suites) == 1:
        parts.append(f"suite {next(iter(suites))}")
    else:
        notes.append("suites differ: " + ", ".join(f"{defense_label(d)} {m.get('suite')}" for d, m in mans.items()))
    line = " · ".join(parts)
    if notes:
        line += " (note: " + "; ".join(notes) + ")"
    return line


def accuracy_frame(results: dict[str, dict]) -> pd.DataFrame:
    """Display frame of the thesis table: index = row labels (Clean, attacks, All), columns =
    defense labels, cells ``acc% [lo, hi]``, ``pending (k/S shards)`` for an attack of a partially
    merged sweep, or ``—`` for an attack a defense did not run."""
    _check_results(results)
    res = ordered(results)
    norm = _common(res, "norm") or ""
    acc = stats.accuracy_table(res)
    rows = [stats.CLEAN, *stats.attack_union(res), stats.ALL]
    frame = pd.DataFrame(MISSING, index=[row_label(r, norm) for r in rows],
                         columns=[defense_label(d) for d in res], dtype=object)
    for rec in acc.itertuples(index=False):
        frame.loc[row_label(rec.row, norm), defense_label(rec.defense)] = format_cell(rec.acc, rec.lo, rec.hi)
    for d, data in res.items():  # attacks a partially merged sweep still runs (bench sweep --merge-partial)
        for key, shards in pending_attacks(stats.manifest(data)).items():
            cell = (row_label(key, norm), defense_label(d))
            if cell[0] in frame.index and frame.loc[cell] == MISSING:
                frame.loc[cell] = f"pending ({shards})"
    for d, data in res.items():  # attacks whose doubled budget still found more (harness/engine/saturation.py)
        for key, _ in unsaturated(data):
            cell = (row_label(key, norm), defense_label(d))
            if cell[0] in frame.index and frame.loc[cell] != MISSING:
                frame.loc[cell] = frame.loc[cell] + " " + UNSATURATED
    for d, data in res.items():  # randomized defenses: verdicts a second, independent scoring reverses
        for row in stats.recheck_summary(data):
            cell = (row_label(row["attack"], norm), defense_label(d))
            if row["unstable"] and cell[0] in frame.index and frame.loc[cell] != MISSING:
                frame.loc[cell] = frame.loc[cell] + " " + UNSTABLE
    return frame


def render_table(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Thesis-style accuracy table (Tables 2.2/2.3 of Ju 2021): rows Clean, each attack (union
    over files, first-seen order), All L∞/L2; columns defenses in canonical order; cells accuracy
    with Wilson 95% interval. Preceded by a header line (dataset, norm, eps, n, notes)."""
    _check_fmt(fmt)
    frame = accuracy_frame(results)
    body = tabulate(frame, headers=["", *frame.columns], tablefmt=fmt, disable_numparse=True,
                    colalign=("left",) + ("right",) * len(frame.columns))
    out = header_line(results) + "\n\n" + body + "\n"
    if any(UNSATURATED in str(v) for v in frame.to_numpy().ravel()):
        out += f"\n{UNSATURATED} budget not saturated: twice the steps with 5 restarts broke more than 2 points of the checked samples that the suite's budget left robust (see the budget check below)\n"
    if any(UNSTABLE in str(v) for v in frame.to_numpy().ravel()):
        out += (f"\n{UNSTABLE} verdict unstable: a second, independent scoring of the same candidates breaks samples this one "
                f"leaves robust, more than {100 * stats.RECHECK_THRESHOLD:.0f} points of accuracy (see the verdict stability below)\n")
    return out


def render_recheck(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Verdict stability of randomized defenses (:func:`harness.stats.recheck_summary`): per defense
    and attack, the robust and broken verdicts a second, independent scoring of the same candidates
    reverses, and the accuracy under both scorings. Empty string when no file has the flags."""
    rows = []
    for d, data in ordered(results).items():
        for r in stats.recheck_summary(data):
            label = attack_label(r["attack"]) if r["attack"] != stats.ALL else "All"
            checked = f"{r['checked']} of {r['attacked']}"
            broken = "" if r["broken"] is None else f"{r['broken_flipped']} of {r['broken']}"
            rows.append([defense_label(d), label, checked, f"{r['robust_flipped']} of {r['robust']}", broken,
                         format_pct(r["acc"]), format_pct(r["acc_both"]) + (f" {UNSTABLE}" if r["unstable"] else "")])
    if not rows:
        return ""
    body = tabulate(rows, headers=["Defense", "Attack", "Checked (of attacked)", "Robust → broken", "Broken → robust", "Acc", "Acc, both scorings"],
                    tablefmt=_check_fmt(fmt), disable_numparse=True)
    caption = ("Verdict stability (randomized defenses; harness/engine/verify.py): every verified candidate scored a second time with independent "
               "draws. The table's accuracy is the first scoring's; \"both scorings\" counts a sample robust only if neither scoring "
               "misclassifies one of its candidates. Samples of older shards carry no second scoring (Checked)")
    return caption + "\n\n" + body + "\n"


def render_saturation(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Budget saturation check (:mod:`harness.engine.saturation`) per defense and attack: the suite's
    budget, the doubled budget, accuracy with both on the first n samples and the difference, then
    the worst case over all attacks. Empty string when no file has a check."""
    rows = []
    for d, data in ordered(results).items():
        check = stats.manifest(data).get("budget_check") or {}
        n = check.get("n")
        for key, e in (check.get("attacks") or {}).items():
            flag = f" {UNSATURATED}" if attack_drop(e, n) > float(check.get("threshold", 0.02)) else ""
            doubled = str(e.get("budget_doubled", ""))
            if "restarts_done" in e:
                blocks = ", part of the next" if e.get("blocks_done") else ""
                doubled += f" ({e['restarts_done']} of {e.get('restarts', '?')} restarts so far{blocks})"
            elif e.get("stopped") == "all broken":
                doubled += f" (every sample the suite left robust broken after {e['restarts_run']} restarts)"
            elif "restarts_run" in e and e.get("probed"):
                doubled += f" (deterministic: stopped after {e['restarts_run']} restart(s), a further seed proposed the same candidates)"
            elif "restarts_run" in e:
                doubled += f" (deterministic: stopped after {e['restarts_run']} restarts, the last two identical)"
            if e.get("narrowed_from"):
                doubled += f" (restarts {e['narrowed_from']}+ only on samples every other attack leaves robust: change at least this)"
            # while the first restart runs: the figures of the samples it has attacked
            so = so_far(data.get("records") or [], e, key)
            if so:
                size, acc, alone, drop = f"{so['n']} of {n} so far", so["acc"], so["acc_doubled"], so["drop"]
            else:
                size, acc, alone, drop = str(n), e.get("acc"), e.get("acc_doubled"), attack_drop(e, n)
            both = None if acc is None else float(acc) - drop
            # later restarts skipped the samples the suite's budget broke: restart 1's outcome stands for those
            alone_s = ("≤ " if e.get("acc_doubled_bound") and not so and alone is not None else "") + format_pct(alone)
            rows.append([defense_label(d), attack_label(key), str(e.get("budget", "")), doubled, size,
                         format_pct(acc), alone_s, format_pct(both), f"{-100 * drop + 0.0:+.1f}{flag}"])
        whole = check.get("all") or {}
        if whole.get("delta") is not None:
            rows.append([defense_label(d), "All", "", "", str(n), format_pct(whole.get("acc")), "", format_pct(whole.get("acc_doubled")), f"{-100 * float(whole['delta']) + 0.0:+.1f}"])
    if not rows:
        return ""
    body = tabulate(rows, headers=["Defense", "Attack", "Budget", "Doubled budget", "n", "Acc", "Acc doubled alone", "Acc, both budgets", "Change (points)"],
                    tablefmt=_check_fmt(fmt), disable_numparse=True)
    caption = ("Budget saturation check (bench run --check-budget; harness/engine/saturation.py): each gradient attack rerun on the first n samples with "
               "twice the steps and 5 restarts. \"Both budgets\" counts a sample robust only if neither budget broke it; the change is that figure's "
               "(a randomized defense can survive the doubled run alone where the suite's run broke it, so the doubled run's own accuracy can hide what it found)")
    if any(r[6].startswith("≤") for r in rows):
        caption += ("; \"≤\": restarts 2-5 attacked only the samples the suite's budget left robust (the others cannot change the verdict), "
                    "so for the samples the suite broke the doubled run alone is its restart 1")
    entries = [e for data in results.values() for e in ((stats.manifest(data).get("budget_check") or {}).get("attacks") or {}).values()]
    if any(isinstance(e, dict) and e.get("scope") == "suite-robust" for e in entries):
        caption += ("; \"—\" alone: on a randomized defense the doubled run attacks only the samples the suite's budget left robust "
                    "(the only ones that can change the verdict), so its accuracy on its own is not measured")
    if any("restarts so far" in r[3] for r in rows):
        caption += "; a check still running shows the restarts done so far (its drop can only grow: rerun the command to finish it)"
    return caption + "\n\n" + body + "\n"


def render_pvalues(results: dict[str, dict], row: str = stats.ALL, *, fmt: str = "github") -> str:
    """Upper-triangular matrix of McNemar p-values between defenses on ``row`` (default the
    worst case "all"), each pair on its shared samples; ``*`` marks p < 0.01. Preceded by a
    caption naming the test and the number of shared samples."""
    _check_fmt(fmt)
    _check_results(results)
    res = ordered(results)
    norm = _common(res, "norm") or ""
    pv = stats.pairwise_mcnemar(res, row)
    nn = pv.attrs["n"]
    names = list(res)
    pair_ns = sorted({int(nn.loc[a, b]) for i, a in enumerate(names) for b in names[i + 1:]})
    if not pair_ns:
        n_text = "N"
    elif len(pair_ns) == 1:
        n_text = str(pair_ns[0])
    else:
        n_text = f"{pair_ns[0]}–{pair_ns[-1]}"
    caption = (f"McNemar p-values, {row_label(row, norm)} (exact binomial when discordant < "
               f"{stats.EXACT_THRESHOLD}) on {n_text} shared samples; * p < {SIGNIFICANCE}")
    if len(names) < 2:
        return caption + "\n\n(only one defense; nothing to compare)\n"
    labels = [defense_label(d) for d in names]
    cells = []
    for i, a in enumerate(names[:-1]):
        cells.append([labels[i]] + ["" if j <= i else format_pvalue(float(pv.loc[a, b]))
                                    for j, b in enumerate(names) if j > 0])
    body = tabulate(cells, headers=["", *labels[1:]], tablefmt=fmt, disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(labels) - 1))
    out = caption + "\n\n" + body + "\n"
    if pv.attrs["notes"]:
        out += "\n" + "\n".join("note: " + n for n in pv.attrs["notes"]) + "\n"
    return out


def _wall(t) -> str:
    if t is None:
        return MISSING
    try:
        return f"{float(t):.1f} s"
    except (TypeError, ValueError):
        return MISSING


def render_budget(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Per defense and attack: attack kind, budget string and wall time (seconds), plus the
    suite and the clean-evaluation wall time."""
    _check_fmt(fmt)
    _check_results(results)
    rows = []
    for defense, data in ordered(results).items():
        man = stats.manifest(data)
        rows.append([defense_label(defense), "Clean", "", f"suite {man.get('suite', '?')}", _wall(man.get("clean_wall_time_s"))])
        for name, info in (man.get("attacks") or {}).items():
            info = info if isinstance(info, dict) else {}
            rows.append([defense_label(defense), attack_label(name), str(info.get("kind", "")),
                         str(info.get("budget", "")), _wall(info.get("wall_time_s"))])
    body = tabulate(rows, headers=["Defense", "Attack", "Kind", "Budget", "Wall time"], tablefmt=fmt,
                    disable_numparse=True)
    return "Attack budgets\n\n" + body + "\n"


def minimization_attacks(data: dict) -> list[str]:
    """Attacks of a result file whose manifest kind is ``"minimization"`` (run order)."""
    attacks = stats.manifest(data).get("attacks") or {}
    return [name for name, info in attacks.items() if isinstance(info, dict) and info.get("kind") == "minimization"]


def _distance(v: float) -> str:
    return MISSING if v is None or math.isnan(v) else f"{v:.3f}"


def render_distances(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Smallest adversarial distances of the minimization attacks (thesis Table 2.6 style): per
    defense and attack, ``mean / median`` of the per-sample smallest verified adversarial distance
    (``min_norm``, at any size) over clean-correct samples where one was found, and how many of the
    clean-correct samples that is. Empty string when no file has a minimization attack."""
    _check_fmt(fmt)
    _check_results(results)
    res = ordered(results)
    rows = []
    for defense, data in res.items():
        outcomes = stats.per_sample_outcomes(data)
        n_clean = int(outcomes[stats.CLEAN].sum())
        for name in minimization_attacks(data):
            d = stats.adversarial_distances(data, name)
            mean, median = stats.distance_summary(data, name)
            rows.append([defense_label(defense), attack_label(name), f"{_distance(mean)} / {_distance(median)}", f"{d.size}/{n_clean}"])
    if not rows:
        return ""
    norm = _common(res, "norm")
    caption = (f"Smallest adversarial distance ({norm_label(norm) if norm else 'mixed norms'}), mean / median over "
               "clean-correct samples with a verified adversarial at any distance (thesis Table 2.6)")
    body = tabulate(rows, headers=["Defense", "Attack", "Mean / median", "Found"], tablefmt=fmt, disable_numparse=True,
                    colalign=("left", "left", "right", "right"))
    return caption + "\n\n" + body + "\n"


def render_certified(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Mean / median of the per-sample certified L2 bound (thesis eq. 2.7) for defenses that record it."""
    rows = []
    for d, data in ordered(results).items():
        vals = [r["certified_l2"] for r in data["records"] if r.get("certified_l2") is not None]
        if vals:
            s = pd.Series(vals)
            rows.append([defense_label(d), len(vals), f"{s.mean():.3f}", f"{s.median():.3f}"])
    if not rows:
        return ""
    return "Certified L2 lower bound eps* (thesis eq. 2.7; 0 for misclassified samples; estimated from the inference's optimum)\n\n" + tabulate(rows, headers=["Defense", "n", "mean eps*", "median eps*"], tablefmt=_check_fmt(fmt)) + "\n"


def format_report(results_dir: str | os.PathLike, dataset: str, norm: str, *, fmt: str = "github") -> str:
    """Full text report of one (dataset, norm): accuracy table, McNemar p-values on "All",
    minimum-distance table (when a minimization attack ran) and attack budgets. Raises
    BenchUserError when there are no result files."""
    results = load_results(results_dir, dataset, norm)
    if not results:
        raise BenchUserError(f"no results for {dataset}/{norm} in {results_dir}; run `bench run ...` first")
    parts = [render_table(results, fmt=fmt), render_pvalues(results, fmt=fmt)]
    distances = render_distances(results, fmt=fmt)
    if distances:
        parts.append(distances)
    certified = render_certified(results, fmt=fmt)
    if certified:
        parts.append(certified)
    parts.append(render_budget(results, fmt=fmt))
    saturation = render_saturation(results, fmt=fmt)
    if saturation:
        parts.append(saturation)
    recheck = render_recheck(results, fmt=fmt)
    if recheck:
        parts.append(recheck)
    parts.append(render_trust(results, fmt=fmt))
    return "\n".join(parts)


def render_trust(results: dict[str, dict], *, fmt: str = "github") -> str:
    """Per defense: the verdict (reliable / unreliable and why / unchecked), the gradient check and
    the number of warnings, then every warning (:func:`harness.engine.sanity.verdict`)."""
    from harness.engine.sanity import verdict

    rows, warn = [], []
    for d, data in ordered(results).items():
        v = verdict(data)
        check = stats.manifest(data).get("gradient_check")
        rows.append([defense_label(d), v.label, check.get("verdict", "?") if check else "not run", str(len(v.warnings))])
        warn += [f"- {defense_label(d)}: {w}" for w in v.warnings]
    body = tabulate(rows, headers=["Defense", "Verdict", "Gradient check", "Warnings"], tablefmt=_check_fmt(fmt), disable_numparse=True)
    out = "Trust checks (harness/engine/sanity.py, harness/engine/gradcheck.py): an unreliable row over-reports robustness\n\n" + body + "\n"
    if warn:
        out += "\nWarnings\n\n" + "\n".join(warn) + "\n"
    return out
