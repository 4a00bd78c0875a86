"""The markdown leaderboard: a pure, deterministic function of the result files.

Same results directory (and output location) -> byte-identical text: no timestamps, no absolute
paths, every ordering fixed. Links to result files and plots are relative to the directory of the
leaderboard file so they work when it is rendered on a code host.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePath

from tabulate import tabulate

from harness import stats
from harness.report.plots import plot_path, write_curves
from harness.report.reproduction import out_of_date
from benchcore.io import atomic_write
from harness.store.results import list_result_sets, load_results, result_path
from harness.engine.sanity import verdict
from harness.report.tables import (
    MISSING, SIGNIFICANCE, attack_label, defense_label, defense_order, format_cell, format_pct,
    format_pvalue, header_line, norm_label,
)

TITLE = "# Robustness leaderboard"


def _rel(target: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(out_dir))
    return PurePath(rel).as_posix()


def _link_target(rel: str) -> str:
    return f"<{rel}>" if any(c in rel for c in " ()") else rel


def _md(text: str) -> str:
    """Escape a string for a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _budget_summary(data: dict) -> str:
    man = stats.manifest(data)
    parts = []
    for name, info in (man.get("attacks") or {}).items():
        budget = info.get("budget") if isinstance(info, dict) else None
        parts.append(f"{attack_label(name)} {budget}" if budget else attack_label(name))
    suite = man.get("suite", "?")
    return f"{suite}: " + "; ".join(parts) if parts else str(suite)


def _sort_key(item: tuple[str, float]) -> tuple[float, str]:
    defense, acc = item
    return (math.inf if math.isnan(acc) else -acc, defense)


def ranked_defenses(results: dict[str, dict]) -> list[str]:
    """Defenses sorted by "All" robust accuracy, descending; ties (and NaN, last) by name. Rows whose
    :func:`harness.engine.sanity.verdict` is unreliable come after every reliable row, whatever their accuracy."""
    acc = stats.accuracy_table(results)
    all_acc = {r.defense: float(r.acc) for r in acc[acc["row"] == stats.ALL].itertuples(index=False)}
    unreliable = {d: not verdict(data).reliable for d, data in results.items()}
    return [d for d, _ in sorted(((d, all_acc.get(d, math.nan)) for d in results), key=lambda t: (unreliable[t[0]], *_sort_key(t)))]


def verdict_cell(v) -> str:
    """The leaderboard's verdict cell: ``reliable``, ``**unreliable**: reasons`` or ``unchecked``."""
    if not v.reliable:
        return "**unreliable**: " + "; ".join(v.reasons)
    return "reliable" if v.checked else "unchecked"


def render_section(results_dir: str | os.PathLike, dataset: str, norm: str, out_dir: str | os.PathLike) -> str:
    """Markdown section of one (dataset, norm): setup line, ranked table, optional curve image."""
    results = load_results(results_dir, dataset, norm)
    ranked = ranked_defenses(results)
    ordered = {d: results[d] for d in defense_order(results)}
    attacks = stats.attack_union(ordered)  # column order independent of the ranking
    acc = stats.accuracy_table(results).set_index(["defense", "row"])

    eps_labels = sorted({str(stats.manifest(d).get("eps_label", stats.manifest(d).get("eps"))) for d in results.values()})
    lines = [f"## {dataset} · {norm_label(norm)} · eps = {' / '.join(eps_labels)}", "", _md(header_line(results)), ""]

    headers = ["#", "Defense", "Clean [95% CI]", f"All {norm_label(norm)} [95% CI]", "Verdict", "Warnings",
               *[attack_label(a) for a in attacks], "n", "Suite: budget", "p vs next", "Result"]
    rows = []
    notes = []
    stale = []
    for rank, defense in enumerate(ranked, start=1):
        data = results[defense]
        v = verdict(data)
        for w in v.warnings:
            notes.append(f"- {_md(defense_label(defense))}: {_md(w)}")
        why = out_of_date(defense, dataset, stats.manifest(data))
        if why:
            stale.append(f"- {_md(defense_label(defense))}: {_md(why)}")

        def cell(row: str, with_ci: bool) -> str:
            if (defense, row) not in acc.index:
                return MISSING
            r = acc.loc[(defense, row)]
            return format_cell(r["acc"], r["lo"], r["hi"]) if with_ci else format_pct(r["acc"])

        if rank < len(ranked):
            res, note = stats.paired_mcnemar(data, results[ranked[rank]], stats.ALL)
            p_text = MISSING if res is None else format_pvalue(res.pvalue)
            if res is not None and note:
                p_text += f" (n={res.n})"
        else:
            p_text = ""
        link = _rel(result_path(results_dir, dataset, norm, defense), out_dir)
        rows.append([
            str(rank), _md(defense_label(defense)), cell(stats.CLEAN, True), cell(stats.ALL, True),
            _md(verdict_cell(v)), str(len(v.warnings)) if v.warnings else "",
            *[cell(a, False) for a in attacks], str(len(data.get("records") or [])),
            _md(_budget_summary(data)), p_text, f"[json]({_link_target(link)})",
        ])
    lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    if notes:
        lines += ["", "Warnings (trust checks recorded in the result files, see `harness/engine/sanity.py`, `harness/engine/gradcheck.py`):", "", *notes]
    if stale:
        lines += ["", "Out of date (the row measured another checkpoint or other defense settings than today's; rerun it):", "", *stale]
    plot = plot_path(results_dir, dataset, norm)
    if plot.is_file():
        lines += [
            "",
            f"![{dataset} {norm_label(norm)} robustness curve]({_link_target(_rel(plot, out_dir))})",
            "",
            "Accuracy vs eps from each sample's smallest verified adversarial over all of a defense's attacks. "
            "Minimization attacks (DeepFool, DDN, C&W, Boundary) trace the curve; bounded attacks only place "
            "points up to the threat model's eps, so a defense evaluated with bounded attacks alone looks flat "
            "until near eps. Every point is an upper bound on robustness at that eps.",
        ]
    lines.append("")
    return "\n".join(lines)


def render_leaderboard(results_dir: str | os.PathLike, *, out_path: str | os.PathLike = "leaderboard.md") -> str:
    """The markdown leaderboard of every (dataset, norm) in ``results_dir``.

    Per result set: defenses ranked by "All" robust accuracy (descending, ties by name) with
    clean and "All" accuracy plus Wilson 95% intervals, per-attack accuracies, n, suite and budget,
    the McNemar p-value against the next row (``*`` at p < 0.01) and a link to the result file;
    links are relative to the directory of ``out_path``. Deterministic: same inputs, same bytes.
    """
    out_dir = Path(out_path).parent
    src = _rel(results_dir, out_dir).rstrip("/") + "/"
    parts = [
        TITLE, "",
        f"Generated by `bench leaderboard` from {src}; do not edit by hand.", "",
        "Accuracies are on the evaluated test samples, with Wilson 95% intervals in points. "
        "\"All\" counts a sample as robust only if it is clean-correct and no attack run against that "
        "defense found a verified adversarial (abstaining counts as an error). \"p vs next\": McNemar's "
        f"test (exact binomial when discordant pairs < {stats.EXACT_THRESHOLD}) of \"All\" against the "
        f"next row on the samples both share; `*` marks p < {SIGNIFICANCE}. "
        "\"Verdict\": **unreliable** when the declared attack gradient fails the finite-difference check or "
        "attacks that do not use it (Square, Boundary, ES-PGD, transfer from another model) beat the gradient "
        "attacks by more than the Wilson interval; unreliable rows are ranked below every reliable row. "
        "\"unchecked\": no attack that does without the declared gradient ran.", "",
    ]
    sets = list_result_sets(results_dir)
    if not sets:
        parts += ["No results yet.", ""]
    for dataset, norm in sets:
        parts.append(render_section(results_dir, dataset, norm, out_dir))
    return "\n".join(parts).rstrip("\n") + "\n"


def _read(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def write_leaderboard(results_dir: str | os.PathLike, out_path: str | os.PathLike, *, plots: bool = False) -> bool:
    """Render the leaderboard to ``out_path`` (redrawing the curves first when ``plots``);
    returns True when the file changed. Writes only when the text differs."""
    if plots:
        write_curves(results_dir)
    out = Path(out_path)
    text = render_leaderboard(results_dir, out_path=out)
    if _read(out) == text:
        return False
    atomic_write(out, text)
    return True


def check_leaderboard(results_dir: str | os.PathLike, out_path: str | os.PathLike) -> bool:
    """True when ``out_path`` holds exactly what :func:`render_leaderboard` produces now (a
    missing file is stale)."""
    out = Path(out_path)
    return _read(out) == render_leaderboard(results_dir, out_path=out)
