"""Robustness curves (accuracy vs eps) from the per-sample adversarial norms in result files.

Rendering uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch)
and strips timestamps/software metadata so reruns on the same inputs give identical files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness import stats
from benchcore.io import atomic_write
from harness.store.results import list_result_sets, load_results
from harness.report.tables import attack_label, defense_label, defense_order, norm_label

PLOT_NAME = "robustness_curve.png"


def plot_path(results_dir: str | os.PathLike, dataset: str, norm: str) -> Path:
    """Where the robustness curve of one (dataset, norm) lives: next to its result files."""
    return Path(results_dir) / dataset / norm / PLOT_NAME


def sample_distances(data: dict) -> pd.Series:
    """Per sample (by index): the smallest perturbation norm that broke it over all attacks.

    ``+inf`` when no attack found an adversarial, ``-inf`` when the sample is not clean-correct,
    and ``0`` when an attack marked it incorrect without recording a norm (abstention or unknown
    norm: counted as broken for every eps > 0, conservatively).
    """
    names = stats.attack_names(data)
    idx, dist = [], []
    for rec in data.get("records") or []:
        idx.append(int(rec["index"]))
        if not rec.get("clean_correct"):
            dist.append(-math.inf)
            continue
        d = math.inf
        for name in names:
            info = (rec.get("attacks") or {}).get(name) or {}
            nv = info.get("norm")
            if nv is not None:
                d = min(d, float(nv))
            elif not info.get("correct", True):
                d = min(d, 0.0)
        dist.append(d)
    return pd.Series(dist, index=pd.Index(idx, name="index"), dtype=float, name="distance")


def curve_data(results: dict[str, dict]) -> pd.DataFrame:
    """Accuracy-vs-eps step curves: columns defense, eps, acc.

    ``acc(eps)`` is the fraction of samples that are clean-correct and whose every recorded
    adversarial norm exceeds eps (``acc(0)`` = clean accuracy). Each defense's curve stops at its
    manifest eps, since bounded attacks say nothing beyond it. Points: 0, every distinct
    adversarial norm in ``(0, eps]``, and eps.
    """
    rows = []
    for defense, data in results.items():
        d = sample_distances(data).to_numpy()
        n = d.size
        eps_max = float(stats.manifest(data).get("eps") or 0.0)
        if n == 0:
            continue
        finite = d[np.isfinite(d) & (d > 0) & (d <= eps_max)]
        grid = np.unique(np.concatenate([[0.0, eps_max], finite]))
        for e in grid:
            acc = float(np.mean(d > -math.inf)) if e == 0 else float(np.mean(d > e))
            rows.append({"defense": defense, "eps": float(e), "acc": acc})
    return pd.DataFrame(rows, columns=["defense", "eps", "acc"])


_RC = {"svg.hashsalt": "harness-plots", "svg.fonttype": "path", "path.simplify": True}  # deterministic output


def _axes():
    """A pyplot-free figure (no global backend switch) and its single axes."""
    fig = Figure(figsize=(5.0, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, ax, out: Path, *, norm: set, title: str) -> None:
    """Axes labels/limits, then save deterministically (no date/software metadata) and atomically."""
    ax.set_xlabel(f"eps ({norm_label(next(iter(norm)))})" if len(norm) == 1 and None not in norm else "eps")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    suffix = out.suffix.lower()
    metadata = {"Date": None} if suffix == ".svg" else {"Software": None} if suffix == ".png" else None
    atomic_write(out, lambda tmp: fig.savefig(tmp, format=suffix.lstrip(".") or None, metadata=metadata))


def robustness_curve(results: dict[str, dict], out_png: str | os.PathLike, *, title: str) -> pd.DataFrame:
    """Plot accuracy vs eps per defense (see :func:`curve_data`) to ``out_png`` (``.png`` or
    ``.svg``) deterministically; returns the plotted curve data. Raises ValueError for no results."""
    if not results:
        raise ValueError("no result files to plot")
    ordered = {d: results[d] for d in defense_order(results)}
    data = curve_data(ordered)
    norm = {stats.manifest(d).get("norm") for d in ordered.values()}
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(_RC):
        fig, ax = _axes()
        for defense in ordered:
            part = data[data["defense"] == defense]
            if part.empty:
                continue
            ax.plot(part["eps"], 100 * part["acc"], drawstyle="steps-post", label=defense_label(defense))
        _finish(fig, ax, out, norm=norm, title=title)
    return data


def write_curves(results_dir: str | os.PathLike) -> list[Path]:
    """(Re)draw the robustness curve of every (dataset, norm) in ``results_dir``; returns the paths."""
    paths = []
    for dataset, norm in list_result_sets(results_dir):
        results = load_results(results_dir, dataset, norm)
        out = plot_path(results_dir, dataset, norm)
        robustness_curve(results, out, title=f"{dataset} {norm_label(norm)}")
        paths.append(out)
    return paths


SWEEP_PLOT_NAME = "eps_sweep.png"


def sweep_plot_path(results_dir: str | os.PathLike, dataset: str, norm: str) -> Path:
    """Where the eps-sweep plot of one (dataset, norm) lives: next to its result files."""
    return Path(results_dir) / dataset / norm / SWEEP_PLOT_NAME


def sweep_data(results: dict[str, dict]) -> pd.DataFrame:
    """Accuracy per (defense, swept attack, eps) with Wilson 95% intervals: columns defense,
    attack, eps, acc, lo, hi, n. Swept attacks are the result keys ``<name>@<eps>`` written by
    :mod:`harness.engine.runner` for a suite attack with ``eps = [...]``; the eps is the manifest entry's
    (the key's suffix for older files). Empty when no file has a swept attack."""
    acc = stats.accuracy_table(results)
    rows = []
    for rec in acc.itertuples(index=False):
        if "@" not in rec.row:
            continue
        name, suffix = rec.row.split("@", 1)
        entry = (stats.manifest(results[rec.defense]).get("attacks") or {}).get(rec.row) or {}
        eps = entry.get("eps")
        if eps is None:
            try:
                eps = float(suffix)
            except ValueError:
                continue
        rows.append({"defense": rec.defense, "attack": name, "eps": float(eps), "acc": rec.acc, "lo": rec.lo, "hi": rec.hi, "n": rec.n})
    df = pd.DataFrame(rows, columns=["defense", "attack", "eps", "acc", "lo", "hi", "n"])
    return df.sort_values(["defense", "attack", "eps"], kind="stable").reset_index(drop=True)


def eps_sweep_curve(results: dict[str, dict], out_png: str | os.PathLike, *, title: str = "") -> pd.DataFrame:
    """Plot accuracy vs eps of every swept attack (one line per defense and attack, markers at the
    evaluated eps, shaded Wilson 95% band) to ``out_png`` deterministically, as in Yao et al.
    Table 1 (FGM at eps 0-0.4); ``title`` is prefixed to "<attacks> eps sweep". Returns the
    plotted data; ValueError when there is nothing to plot."""
    if not results:
        raise ValueError("no result files to plot")
    ordered = {d: results[d] for d in defense_order(results)}
    data = sweep_data(ordered)
    if data.empty:
        raise ValueError("the result files have no eps-sweep attacks (keys like 'fgm@0.2'); run a sweep suite such as --suite fgm-sweep")
    norm = {stats.manifest(d).get("norm") for d in ordered.values()}
    attacks = list(dict.fromkeys(data["attack"]))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(_RC):
        fig, ax = _axes()
        for defense in ordered:
            for attack in attacks:
                part = data[(data["defense"] == defense) & (data["attack"] == attack)]
                if part.empty:
                    continue
                label = defense_label(defense) if len(attacks) == 1 else f"{defense_label(defense)} · {attack_label(attack)}"
                (line,) = ax.plot(part["eps"], 100 * part["acc"], marker="o", label=label)
                ax.fill_between(part["eps"], 100 * part["lo"], 100 * part["hi"], color=line.get_color(), alpha=0.15, linewidth=0)
        sweep = " / ".join(attack_label(a) for a in attacks) + " eps sweep"
        _finish(fig, ax, out, norm=norm, title=f"{title} · {sweep}" if title else sweep)
    return data
