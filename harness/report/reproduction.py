"""Our results next to a reference table of the thesis, cell by cell (``docs/reproduction.md``).

A pure function of ``results/`` and a TOML reference file (``docs/thesis_fmnist.toml``: Table 2.3 on
Fashion-MNIST), which names everything the document shows: the defenses (columns), per norm the rows
(clean, every attack, "All") with the thesis numbers, the pairs the thesis reports as not significant,
notes on single cells, and under ``[report]`` the title, our data set, the introduction and the
significance level; the file's comments describe its keys. For each norm, row and defense the
document shows our accuracy with its Wilson 95% interval, the thesis number and the difference, then
checks the qualitative conclusions: the ordering of the defenses by "All" accuracy and which pairwise
differences are significant (McNemar) compared with the thesis. Another reference table is another
TOML file, no code.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
from pathlib import Path

from tabulate import tabulate

from harness import stats
from harness.errors import BenchUserError
from benchcore.io import atomic_write
from threat_models import NORMS
from harness.engine.saturation import THRESHOLD, attack_drop, headline_drop, progress, so_far
from harness.engine.saturation import pending as saturation_pending
from harness.store.results import load_results, pending_attacks
from harness.report.tables import attack_label, defense_label, norm_label

ALPHA = 0.01  # McNemar significance level unless the reference file sets ``alpha``


def _ours(results: dict, defense: str, row: str, *, upper_bound: bool = False):
    """``(acc, lo, hi, n)`` of one cell in percent, or None when not measured. The All of a partial
    sweep merge (attacks still pending) is only an upper bound: None unless ``upper_bound``."""
    if defense not in results:
        return None
    if row == stats.ALL and not upper_bound and pending_attacks(results[defense]["manifest"]):
        return None
    out = stats.per_sample_outcomes(results[defense])
    if row not in out.columns:
        return None
    k, n = int(out[row].sum()), len(out)
    lo, hi = stats.wilson_interval(k, n)
    return 100 * k / n, 100 * lo, 100 * hi, n


def _budget(data: dict, row: str) -> str:
    m = data["manifest"]
    if row in (stats.CLEAN, stats.ALL):
        return f"suite {m.get('suite')}, n={m.get('n')}"
    a = m.get("attacks", {}).get(row)
    return a.get("budget", "") if a else ""


GAP = 5.0  # points: cells further from the thesis than this get an explanation (reference file: ``gap``)


def explain_cell(data: dict, t: dict, defenses: list[str], defense: str, row: str, *, gap: float = GAP) -> str:
    """Why one cell is more than ``gap`` points from the thesis, from measurements only.

    Splits the difference into the clean-accuracy gap (the checkpoint: training epochs from its card)
    and the attack's own drop from clean (ours vs the thesis's); adds the sampling uncertainty (the
    thesis value inside our Wilson interval), our budget, the budget saturation check when the file
    has one (:mod:`harness.engine.saturation`), for "All" the attacks ours takes the worst case over, and
    the thesis file's own note on the cell (``[<norm>.notes] "<defense>/<row>" = "..."``, e.g. a typo).
    """
    defense_index = defenses.index(defense)
    m = data["manifest"]
    ours = _ours({"d": data}, "d", stats.CLEAN if row == "clean" else (stats.ALL if row == "all" else row), upper_bound=True)
    acc, lo, hi, n = ours
    ref = t[row][defense_index]
    parts = []
    if lo <= ref <= hi:
        parts.append(f"the thesis value lies inside our 95% interval ({lo:.1f}-{hi:.1f}, n={n}): not a significant difference")
    clean_ours = _ours({"d": data}, "d", stats.CLEAN)[0]
    clean_ref = t["clean"][defense_index]
    epochs = m.get("checkpoint_epochs")
    status = checkpoint_status(defense, m.get("dataset", ""), m.get("checkpoint_sha256"))
    if status.startswith("older"):
        parts.append(f"this row evaluated an older checkpoint than the one found today ({status[len('older ('):-1]}): rerun it")
    changed = settings_changes(defense, m.get("dataset", ""), m)
    if changed:
        parts.append(f"this row evaluated other defense settings than today's ({', '.join(changed)}): rerun it")
    if row == "clean":
        parts.append(f"checkpoint trained {epochs} epochs (model card); the clean gap is the checkpoint's")
        return "; ".join(parts)
    drop_ours, drop_ref = clean_ours - acc, clean_ref - ref
    clean_gap = clean_ours - clean_ref
    residual = (acc - ref) - clean_gap
    if abs(residual) <= gap:
        parts.append(f"follows the clean-accuracy gap ({clean_gap:+.1f} points, checkpoint trained {epochs} epochs): the attack removes {drop_ours:.1f} points from clean here, {drop_ref:.1f} in the thesis")
    else:
        stronger = "more" if residual < 0 else "fewer"
        parts.append(f"beyond the clean gap ({clean_gap:+.1f}): the attack removes {drop_ours:.1f} points from clean here vs {drop_ref:.1f} in the thesis ({abs(residual):.1f} {stronger})")
    if row == "all":
        pending = pending_attacks(m)
        if pending:
            parts.append(f"incomplete row: {', '.join(f'{attack_label(a)} ({s})' for a, s in pending.items())} still pending, which can only lower All")
        extra = [a for a in m.get("attacks", {}) if a not in t]
        if extra:
            parts.append(f"our All also takes the worst case over {', '.join(attack_label(a) for a in extra)}, which the thesis did not run")
            parts.append(thesis_attacks_all(data, t, ref))
        whole = headline_drop(data)
        if whole is not None:  # the budget check of the worst case itself (what the row's verdict rests on)
            bc = m["budget_check"]
            going = [attack_label(k) for k, e in (bc.get("attacks") or {}).items() if isinstance(e, dict) and progress(e)]
            over = whole > float(bc.get("threshold", THRESHOLD))
            parts.append(f"budget check of the worst case: the doubled attacks lower it by {'at least ' if going and over else ''}{100 * whole:.1f} points on the first "
                         f"{bc.get('n')} samples, counting a sample robust only if neither budget broke it ("
                         + ("more than the threshold: the row over-reports robustness" if over else "within the threshold")
                         + (f"; {', '.join(going)} unfinished, which can only lower it further" if going else "") + ")")
    else:
        budget = (m.get("attacks", {}).get(row) or {}).get("budget", "")
        parts.append(f"our budget: {budget} (suite {m.get('suite')})")
    check = (m.get("budget_check") or {}).get("attacks", {}).get(row)
    planned = m.get("budget_check_planned")
    left = saturation_pending(data, int(planned["n"]), planned.get("attacks")) if isinstance(planned, dict) and planned.get("n") else {}
    if row == "all":  # an attack whose check has started is "unfinished" (the headline above names it), not "pending"
        unstarted = [a for a, e in left.items() if not e]
        started = [a for a, e in left.items() if e]
        if unstarted:
            parts.append(f"budget check of {', '.join(attack_label(a) for a in unstarted)} pending: the sweep plan's check "
                         f"(2x steps, 5 restarts, first {planned['n']} samples) has not run yet")
        if started and headline_drop(data) is None:
            going = ", ".join(f"{attack_label(a)} ({progress(left[a]) or 'started'})" for a in started)
            parts.append(f"budget check of {going} unfinished: its further blocks can only lower All")
    elif left and not check and row in left:  # the verdict reads "budget check pending" too
        parts.append(f"budget check pending: the sweep plan's check (2x steps, 5 restarts, first {planned['n']} samples) has not run yet")
    if check:
        first = so_far(data.get("records") or [], check, row)
        if first is not None:  # restart 1 still running: its finished blocks only (the entry's own figures count unattacked samples as standing)
            alone = f"; the doubled run alone leaves {100 * first['acc_doubled']:.1f}" if first["acc_doubled"] != first["acc_both"] else ""
            parts.append(f"budget check in progress: 2x steps, restart 1 of {check.get('restarts', '?')} on {first['n']} of the first {m['budget_check'].get('n')} samples "
                         f"so far, {100 * first['acc']:.1f} -> {100 * first['acc_both']:.1f} on those counting both budgets "
                         f"({-100 * float(first['drop']) + 0.0:+.1f} points; can only fall further{alone})")
        else:
            n_checked = m["budget_check"].get("n")
            drop = attack_drop(check, n_checked)
            going = progress(check)  # unfinished: its further blocks can only break more
            at_least = "at least " if (going or check.get("narrowed_from")) and drop > 0 else ""
            inner = [f"check unfinished: {going}; further blocks can only lower it"] if going else []
            if check.get("narrowed_from"):
                inner.append(f"restarts {check['narrowed_from']}-{check.get('restarts', '?')} attack only the samples every other attack leaves robust: "
                             "the attack's verdict was decided, and only those can change All")
            unfinished = f" ({'; '.join(inner)})" if inner else ""
            parts.append(f"budget check: 2x steps and 5 restarts change it by {at_least}{-100 * drop + 0.0:+.1f} points on the first {n_checked} samples, "
                         f"counting a sample robust only if neither budget broke it{unfinished}")
    note = cell_note((t.get("notes") or {}).get(f"{defense}/{row}"), m.get("checkpoint_sha256"), where=f"{defense}/{row}")
    if note:
        parts.append(note)
    return "; ".join(parts)


def cell_note(note, checkpoint_sha256: str | None, *, where: str = "") -> str | None:
    """The text of a reference file's note on one cell, for a row of the checkpoint ``checkpoint_sha256``.

    A note is a string (true of any checkpoint: a typo in the thesis) or a table
    ``{text = "...", checkpoint = "<sha256 prefix>"}`` for one that cites a row's measurements: when the
    row was evaluated on another checkpoint the note is shown as what it is, a measurement of that other
    model ("measured on checkpoint 79db6305, not this row's 8ac349a1: ..."), not as an explanation of
    this row. Before stop 55 a rerun on a new checkpoint left the old row's counts in the document
    (the L2 E-ABS PGD note still spoke of "this 48-epoch checkpoint" under the 200-epoch row)."""
    if note is None or isinstance(note, str):
        return note or None
    if not isinstance(note, dict) or not isinstance(note.get("text"), str) or not isinstance(note.get("checkpoint"), str) or len(note["checkpoint"]) < 8:
        raise BenchUserError(f"reference note {where!r}: a string or {{text = \"...\", checkpoint = \"<at least 8 hex digits of the checkpoint's sha256>\"}}, got {note!r}")
    mine = str(checkpoint_sha256 or "")
    if mine.startswith(note["checkpoint"].lower()):
        return note["text"]
    return f"measured on checkpoint {note['checkpoint'][:8]}, not this row's {mine[:8] or 'unknown'} (not yet redone on it): {note['text']}"


def within_gap(results: dict, t: dict, defenses: list[str], rows: list[str], gap: float) -> str:
    """One line: how many measured cells of a norm's table lie within ``gap`` points of the thesis,
    in all and per defense (cells not run or pending are not counted)."""
    per = {}
    for d in defenses:
        diffs = [abs(o[0] - t[row][defenses.index(d)]) for row in rows
                 if (o := _ours(results, d, stats.CLEAN if row == "clean" else (stats.ALL if row == "all" else row))) is not None]
        if diffs:
            per[d] = (sum(x <= gap for x in diffs), len(diffs))
    if not per:
        return f"Within {gap:g} points of the thesis: no measured cells."
    k, m = sum(v[0] for v in per.values()), sum(v[1] for v in per.values())
    return f"Within {gap:g} points of the thesis: {k} of {m} measured cells ({'; '.join(f'{defense_label(d)} {a}/{b}' for d, (a, b) in per.items())})."


def thesis_attacks_all(data: dict, t: dict, ref: float) -> str:
    """Our "All" restricted to the attacks the thesis table also has (the per-sample worst case over
    those columns only), and which of our other attacks lower it below that: the part of an All cell's
    gap that comes from running more attacks than the thesis, measured from the records."""
    out = stats.per_sample_outcomes(data)
    shared = [a for a in out.columns if a in t and a not in (stats.CLEAN, stats.ALL)]
    if not shared:
        return "none of the thesis's attacks is in our row"
    robust = out[stats.CLEAN] & out[shared].all(axis=1)
    acc = 100 * float(robust.mean())
    extra = [a for a in out.columns if a not in shared and a not in (stats.CLEAN, stats.ALL)]
    lower = [f"{attack_label(a)} breaks {int((robust & ~out[a]).sum())}" for a in extra if int((robust & ~out[a]).sum())]
    tail = f"; of the samples that survive those, {', '.join(lower)}" if lower else "; none of our other attacks breaks a sample that survives those"
    return f"over the thesis's own attacks ({', '.join(attack_label(a) for a in shared)}) our All is {acc:.1f} ({acc - ref:+.1f} from the thesis){tail}"


def settings_changes(defense: str, dataset: str, manifest: dict) -> list[str]:
    """How the defense a result file evaluated differs from the one built today with the same options
    and the model card found today: ``["inference.lr 0.4 -> 0.05", ...]`` over the keys both record
    in ``defense_config`` (execution options such as ``precision`` do not change results and are
    skipped; keys a file does not record are not compared). Empty when nothing changed or when the
    defense cannot be built here (an uninstalled plugin)."""
    from harness.engine.models import config_changes, today_config

    recorded = manifest.get("defense_config")
    today = today_config(defense, dataset, manifest.get("defense_options"))
    if not isinstance(recorded, dict) or today is None:
        return []
    return config_changes(recorded, today)


def checkpoint_status(defense: str, dataset: str, sha: str | None) -> str:
    """Whether a result file evaluated the checkpoint that is found today: ``current``, or
    ``older (now N epochs)`` when the defense has been retrained since (its row is then stale)."""
    from harness.store.checkpoints import find_checkpoint, read_card

    path = find_checkpoint(defense, dataset)
    if path is None or not sha:
        return "—"
    card = read_card(path)
    return "current" if card.get("sha256") == sha else f"older (now {card.get('epochs')} epochs)"


def out_of_date(defense: str, dataset: str, manifest: dict) -> str:
    """Why a result row no longer describes the defense found today (retrained checkpoint, changed
    settings), or "" when it still does (or when that cannot be told here)."""
    status = checkpoint_status(defense, dataset, manifest.get("checkpoint_sha256"))
    changed = settings_changes(defense, dataset, manifest)
    why = [] if status in ("current", "—") else [f"measured an older checkpoint {status.removeprefix('older ')}"]
    if changed:
        why.append(f"settings changed since: {', '.join(changed)}")
    return "; ".join(why)


def _status_cell(defense: str, dataset: str, manifest: dict) -> str:
    status = checkpoint_status(defense, dataset, manifest.get("checkpoint_sha256"))
    changed = settings_changes(defense, dataset, manifest)
    return status + (f"; settings changed since: {', '.join(changed)}" if changed else "")


def render_reproduction(results_dir: str | os.PathLike, thesis_path: str | os.PathLike, *, dataset: str | None = None) -> str:
    """Markdown comparing ``results_dir/<dataset>/<norm>`` with the reference tables in ``thesis_path``
    (``dataset``: the reference file's ``[report] dataset`` unless given)."""
    thesis = tomllib.loads(Path(thesis_path).read_text(encoding="utf-8"))
    defenses, report = thesis["defenses"], thesis["report"]
    for norm in (k for k in thesis if k in NORMS):  # a malformed note is an error even where its cell is close to the thesis
        for where, note in (thesis[norm].get("notes") or {}).items():
            cell_note(note, None, where=f"[{norm}.notes] {where}")
    dataset = dataset or report["dataset"]
    alpha, gap = float(report.get("alpha", ALPHA)), float(report.get("gap", GAP))
    lines = [
        f"# {report['title']}",
        "",
        f"Generated by `bench reproduction` from `{Path(results_dir).as_posix()}/` and `{Path(thesis_path).as_posix()}`; do not edit by hand.",
        f"Thesis numbers: {thesis['source']}.",
        "",
        *report["intro"].strip("\n").split("\n"),
        "",
    ]
    for norm in (k for k in thesis if k in NORMS):
        t = thesis[norm]
        results = load_results(results_dir, dataset, norm)
        lines += [f"## {norm_label(norm)} (eps = {t['eps']})", ""]
        rows = [r for r in t if r not in ("eps", "not_significant", "notes")]
        table = []
        for row in rows:
            label = "Clean" if row == "clean" else ("All " + norm_label(norm) if row == "all" else attack_label(row))
            cells = [label]
            for i, d in enumerate(defenses):
                ref = t[row][i]
                ours = _ours(results, d, row)
                pending = pending_attacks(results[d]["manifest"]) if d in results else {}
                bound = _ours(results, d, row, upper_bound=True) if row == "all" and pending else None
                if bound is not None:  # worst case over the finished attacks: the pending ones can only lower it
                    cells.append(f"≤ {bound[0]:.1f} / {ref:.1f} / pending ({len(pending)} attack{'s' if len(pending) > 1 else ''})")
                elif ours is None:
                    cells.append(f"— / {ref:.1f} / {'pending (' + pending[row] + ')' if row in pending else 'not run'}")
                else:
                    acc, lo, hi, _ = ours
                    cells.append(f"{acc:.1f} ({lo:.1f}-{hi:.1f}) / {ref:.1f} / {acc - ref:+.1f}")
            table.append(cells)
        lines.append(tabulate(table, headers=["", *[defense_label(d) for d in defenses]], tablefmt="github"))
        lines.append("")
        lines += [within_gap(results, t, defenses, rows, gap), ""]
        # budgets actually used
        brows = []
        for d in defenses:
            if d in results:
                m = results[d]["manifest"]
                pending = pending_attacks(m)
                brows.append([defense_label(d), m.get("n"), m.get("suite"), "; ".join([f"{a}: {v.get('budget', '')}" for a, v in m.get("attacks", {}).items()]
                                                                                  + [f"{a}: pending ({s}; sweep in progress)" for a, s in pending.items()]),
                              m.get("checkpoint_epochs"), _status_cell(d, dataset, m)])
        if brows:
            lines += ["Budgets of our runs:", "", tabulate(brows, headers=["Defense", "n", "suite", "attacks", "training epochs", "checkpoint"], tablefmt="github"), ""]
        far = []
        for row in rows:
            for i, d in enumerate(defenses):
                ours = _ours(results, d, stats.CLEAN if row == "clean" else (stats.ALL if row == "all" else row), upper_bound=True)
                # an incomplete row's All is an upper bound: far from the thesis only when already below it
                far_off = ours is not None and (ours[0] < t[row][i] - gap if row == "all" and d in results and pending_attacks(results[d]["manifest"])
                                                else abs(ours[0] - t[row][i]) > gap)
                if far_off:
                    label = "Clean" if row == "clean" else ("All" if row == "all" else attack_label(row))
                    far.append(f"- {defense_label(d)} / {label} ({ours[0] - t[row][i]:+.1f}): {explain_cell(results[d], t, defenses, d, row, gap=gap)}.")
        if far:
            lines += [f"Cells more than {gap:g} points from the thesis, and what the measurements say about them:", "", *far, ""]
        # qualitative checks
        present = [d for d in defenses if _ours(results, d, stats.ALL) is not None]
        partial = [d for d in defenses if d in results and d not in present]
        if partial:
            lines.append(f"- Left out of the ordering and significance: {', '.join(defense_label(d) for d in partial)} "
                         f"(incomplete row{'s' if len(partial) > 1 else ''}: the All of the finished attacks is only an upper bound).")
        if len(present) >= 2:
            ours_all = {d: _ours(results, d, stats.ALL)[0] for d in present}
            ref_all = {d: t["all"][defenses.index(d)] for d in present}
            ord_ours = sorted(present, key=lambda d: -ours_all[d])
            ord_ref = sorted(present, key=lambda d: -ref_all[d])
            lines.append(f"- Ordering by All {norm_label(norm)}: ours {' > '.join(defense_label(d) for d in ord_ours)}; thesis {' > '.join(defense_label(d) for d in ord_ref)} — {'same' if ord_ours == ord_ref else 'differs'}.")
            ns = {frozenset(p) for p in t.get("not_significant", [])}
            agree, total = 0, 0
            details = []
            for a, b in itertools.combinations(present, 2):
                res, note = stats.paired_mcnemar(results[a], results[b], stats.ALL)
                if res is None or (isinstance(res.pvalue, float) and math.isnan(res.pvalue)):
                    details.append(f"{defense_label(a)} vs {defense_label(b)}: {note or 'not testable'}")
                    continue
                ours_sig = res.pvalue < alpha
                thesis_sig = frozenset((a, b)) not in ns
                total += 1
                agree += ours_sig == thesis_sig
                details.append(f"{defense_label(a)} vs {defense_label(b)}: p={res.pvalue:.3g} ({'significant' if ours_sig else 'not significant'}; thesis: {'significant' if thesis_sig else 'not significant'})")
            lines.append(f"- Significance (McNemar on All {norm_label(norm)}, alpha {alpha:g}): {agree}/{total} pairs agree with the thesis.")
            lines += [f"  - {x}" for x in details]
            lines.append("")
        else:
            lines += ["- Not enough defenses evaluated for the qualitative checks.", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_reproduction(results_dir, thesis_path, out_path) -> bool:
    """Write the document; return whether it changed."""
    return write_if_changed(out_path, render_reproduction(results_dir, thesis_path))


def write_if_changed(out_path, text: str) -> bool:
    """Write ``text`` to ``out_path`` unless it already holds it; return whether it changed."""
    out = Path(out_path)
    old = out.read_text(encoding="utf-8") if out.exists() else None
    if old == text:
        return False
    atomic_write(out, text)
    return True
