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
from harness.results import list_result_sets, load_results
from harness.tables import defense_label, defense_order, norm_label

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
    with rc_context({"svg.hashsalt": "harness-plots", "svg.fonttype": "path", "path.simplify": True}):
        fig = Figure(figsize=(5.0, 3.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for defense in ordered:
            part = data[data["defense"] == defense]
            if part.empty:
                continue
            ax.plot(part["eps"], 100 * part["acc"], drawstyle="steps-post", label=defense_label(defense))
        xlabel = f"eps ({norm_label(next(iter(norm)))})" if len(norm) == 1 and None not in norm else "eps"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        suffix = out.suffix.lower()
        metadata = {"Date": None} if suffix == ".svg" else {"Software": None} if suffix == ".png" else None
        tmp = out.with_name(f".{out.name}.tmp{suffix}")
        try:
            fig.savefig(tmp, metadata=metadata)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
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
