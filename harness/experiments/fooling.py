"""Scoring defenses on NEAT fooling images (Yao et al. section 4.2; Nguyen et al. 2015).

A fooling image is unrecognisable to people but classified as a target class with >= 90 % confidence
by a *source* model (:mod:`harness.attacks.neat` evolves them). On such an image a defense

* is **fooled** when it predicts the target class and does not abstain,
* **abstains** when ``defense.abstain`` is True -- a *success* of the defense here (the
  reconstruction-error reject of Yao et al. section 3.2 / ABS caught it; Yao et al. report a
  rejection rate of 90.6 %),
* predicts an **other** class otherwise (neither fooled nor rejected).

:func:`run_neat` is the library function behind ``bench neat``: it evolves the images against the
source model, scores every requested defense and writes, under ``<out_dir>/<dataset>/neat/``:
``fooling.png`` (one image per target), ``fooling.safetensors`` (images + targets + confidences) and
``results.json`` (manifest + per-defense rates + per-image outcomes; written atomically).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from harness.attacks.neat import FoolingSet, evolve_fooling_images, load_neat_settings, neat_version
from benchcore.io import atomic_write
from harness.errors import BenchUserError
from harness.store.results import FOOLING_OUTCOMES as OUTCOMES
from harness.store.results import FOOLING_SCHEMA_VERSION as SCHEMA_VERSION
from harness.store.results import write_fooling


def neat_dir(out_dir: str | os.PathLike, dataset: str) -> Path:
    """Where the NEAT files of ``dataset`` go: ``<out_dir>/<dataset>/neat/``."""
    return Path(out_dir) / dataset / "neat"


@torch.no_grad()
def score_fooling(defense, fooling_set: FoolingSet, *, generator: torch.Generator | None, only_reached: bool = True, batch_size: int = 100) -> dict:
    """Fooled / abstained / other counts and rates of ``defense`` on the fooling images.

    Yao et al. section 4.2: only images on which the source model reached the confidence threshold
    are attacks ("used for test"), so by default the others are left out (``only_reached=False``
    scores all). ``rejection_rate`` = abstained / total (the paper's 90.6 % for its model); rates are
    None when no image is scored. ``records`` holds one entry per scored image (index into the
    fooling set, target, prediction, abstained, outcome). One draw per image for randomized defenses.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keep = fooling_set.reached if only_reached else torch.ones(len(fooling_set), dtype=torch.bool)
    idx = torch.nonzero(keep).flatten()
    n = int(idx.numel())
    counts = dict.fromkeys(OUTCOMES, 0)
    records = []
    if n:
        device = next((p.device for p in defense.parameters()), torch.device("cpu"))
        x = fooling_set.images[idx].to(device)
        preds, abst = defense.classify(x, generator=generator, batch_size=batch_size)
        targets = fooling_set.targets[idx]
        for i, t, p, a in zip(idx.tolist(), targets.tolist(), preds.cpu().tolist(), abst.cpu().tolist()):
            outcome = "abstained" if a else "fooled" if p == t else "other"
            counts[outcome] += 1
            records.append({"index": i, "target": t, "prediction": p, "abstained": bool(a), "outcome": outcome})
    out: dict = {"n": n, **counts}
    for k in OUTCOMES:
        out[f"{k}_rate"] = counts[k] / n if n else None
    out["rejection_rate"] = out["abstained_rate"]
    out["records"] = records
    return out


def save_fooling_set(fooling_set: FoolingSet, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> Path:
    """Write the fooling set as safetensors (images, targets, confidences, generations, reached), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "images": fooling_set.images.detach().cpu().contiguous(),
        "targets": fooling_set.targets.cpu().contiguous(),
        "confidences": fooling_set.confidences.cpu().contiguous(),
        "generations": fooling_set.generations.cpu().contiguous(),
        "reached": fooling_set.reached.cpu().contiguous(),
    }
    meta = {"threshold": repr(fooling_set.threshold), **{k: str(v) for k, v in (metadata or {}).items()}}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_fooling_set(path: str | os.PathLike) -> FoolingSet:
    """Read a fooling set written by :func:`save_fooling_set`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        return FoolingSet(t["images"], t["targets"], t["confidences"], t["generations"], t["reached"], float(meta.get("threshold", "nan")))
    except (OSError, KeyError, ValueError) as exc:
        raise BenchUserError(f"{path} is not a fooling set written by bench ({exc}); rerun `bench neat`") from None


def plot_fooling(fooling_set: FoolingSet, path: str | os.PathLike, *, class_names: Sequence[str] = (), title: str = "") -> Path:
    """A grid of the fooling images titled with target class and source confidence (Agg canvas).

    Images that did not reach the threshold get their confidence in parentheses.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(fooling_set)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.0 * cols, 2.3 * rows + (0.4 if title else 0)), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = fooling_set.images[i].detach().cpu().float()
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(img[:3].permute(1, 2, 0).clamp(0, 1).numpy())
        t = int(fooling_set.targets[i])
        name = class_names[t] if t < len(class_names) else str(t)
        conf = float(fooling_set.confidences[i])
        conf_s = f"{conf:.3f}" if bool(fooling_set.reached[i]) else f"({conf:.3f})"
        ax.set_title(f"{t}: {name}\n{conf_s}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
    return path


def summary_table(scores: dict[str, dict], *, skipped: dict[str, str] | None = None, tablefmt: str = "github") -> str:
    """Per defense: scored images, fooled / abstained (= rejection rate) / other in percent."""
    from tabulate import tabulate

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    rows = [[name, s["n"], pct(s["fooled_rate"]), pct(s["abstained_rate"]), pct(s["other_rate"])] for name, s in scores.items()]
    rows += [[name, "skipped", "", "", ""] for name in (skipped or {})]
    return tabulate(rows, headers=["Defense", "Images", "Fooled %", "Rejected (abstained) %", "Other %"], tablefmt=tablefmt, disable_numparse=True)


def run_neat(
    *,
    source: str = "cnn",
    dataset: str = "fmnist",
    defenses: Sequence[str],
    out_dir: str | os.PathLike,
    seed: int = 0,
    device: torch.device | str = "cpu",
    population: int | None = None,
    generations: int | None = None,
    threshold: float | None = None,
    runs_per_target: int | None = None,
    progress: bool = True,
    settings_path: str | os.PathLike | None = None,
    announce: Callable[[str], None] = print,
) -> dict:
    """Evolve NEAT fooling images against ``source`` and score ``defenses`` on them (Yao et al. 4.2).

    ``population`` / ``generations`` / ``threshold`` / ``runs_per_target`` default to the ``[run]``
    section of ``threat_models/neat.toml`` (or of ``settings_path``). Checkpoints are never trained
    here: a missing source checkpoint is a :class:`BenchUserError`; a defense without a checkpoint
    is skipped with a message (and listed under ``skipped``). Writes ``fooling.png``,
    ``fooling.safetensors`` and ``results.json`` to ``<out_dir>/<dataset>/neat/``.

    Returns ``{"results": <the results.json object>, "paths": {"png", "safetensors", "results"},
    "table": <printable summary table>}``.
    """
    from harness import datasets
    from harness.store.checkpoints import find_checkpoint
    from harness.engine.models import build_defense, load_defense
    from harness.store.provenance import code_commit, command_line, device_name, package_versions, resolve_device

    defenses = list(defenses)
    if not defenses:
        raise BenchUserError("no defenses to score; pass at least one (e.g. --defense cnn)")
    if len(set(defenses)) != len(defenses):
        raise BenchUserError(f"defenses listed twice: {', '.join(sorted({d for d in defenses if defenses.count(d) > 1}))}; list each once")
    device = resolve_device(device) if isinstance(device, str) else device
    settings = load_neat_settings(settings_path)
    run_cfg = settings["run"]
    population = int(run_cfg.get("population", 50) if population is None else population)
    generations = int(run_cfg.get("generations", 50) if generations is None else generations)
    threshold = float(run_cfg.get("threshold", 0.9) if threshold is None else threshold)
    runs_per_target = int(run_cfg.get("runs_per_target", 1) if runs_per_target is None else runs_per_target)
    for name, v, lo in (("population", population, 2), ("generations", generations, 1), ("runs-per-target", runs_per_target, 1)):
        if v < lo:
            raise BenchUserError(f"--{name} must be >= {lo}, got {v}")
    if not 0.0 < threshold <= 1.0:
        raise BenchUserError(f"--threshold must be in (0, 1], got {threshold}; the paper uses 0.9")
    info = datasets.get_info(dataset)

    # validate every name first (unknown names and unsupported datasets are errors, not skips)
    for name in dict.fromkeys([source, *defenses]):
        build_defense(name, dataset)

    src_model, src_card = load_defense(source, dataset, device=device, train_if_missing=False, progress=progress, announce=announce)
    announce(f"evolving NEAT fooling images against {source} on {dataset}: {info.num_classes} targets x {runs_per_target} run(s), population {population}, up to {generations} generations, threshold {threshold}")
    t0 = time.perf_counter()
    fs = evolve_fooling_images(
        src_model, num_classes=info.num_classes, shape=info.shape, threshold=threshold, population=population,
        generations=generations, seed=seed, progress=progress, runs_per_target=runs_per_target, settings=settings, device=device,
    )
    evolve_s = time.perf_counter() - t0
    n_reached = int(fs.reached.sum())
    announce(f"{n_reached}/{len(fs)} fooling images reached confidence {threshold} ({evolve_s:.0f} s)")

    scores: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    meta: dict[str, dict] = {}
    for name in defenses:
        probe = build_defense(name, dataset)
        if probe.trainable and find_checkpoint(probe.checkpoint_name(), dataset) is None:
            skipped[name] = f"no checkpoint for {probe.checkpoint_name()} on {dataset}; run `bench train --defense {name} --dataset {dataset}`"
            announce(f"skipping {name}: {skipped[name]}")
            continue
        model, card = (src_model, src_card) if name == source else load_defense(name, dataset, device=device, train_if_missing=False, progress=progress, announce=announce)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        t1 = time.perf_counter()
        scores[name] = score_fooling(model, fs, generator=gen)
        scores[name]["wall_time_s"] = round(time.perf_counter() - t1, 2)
        meta[name] = {"checkpoint_sha256": card.get("sha256"), "randomized": bool(model.randomized), "paper": model.paper}

    out = neat_dir(out_dir, dataset)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / "fooling.png", "safetensors": out / "fooling.safetensors", "results": out / "results.json"}
    class_names = tuple(info.class_names)
    save_fooling_set(fs, paths["safetensors"], metadata={"source": source, "dataset": dataset, "seed": seed})
    plot_fooling(fs, paths["png"], class_names=class_names, title=f"NEAT fooling images vs {source} ({dataset}); (x) = below {threshold}")
    versions = dict(package_versions(), **{"neat-python": neat_version()})
    per_image = [
        {"index": i, "target": int(fs.targets[i]), "confidence": float(fs.confidences[i]), "generations": int(fs.generations[i]), "reached": bool(fs.reached[i])}
        for i in range(len(fs))
    ]
    results = {
        "schema": SCHEMA_VERSION,
        "manifest": {
            "attack": "neat",
            "paper": "Nguyen, Yosinski & Clune 2015; Yao et al. section 4.2",
            "source": source,
            "source_checkpoint_sha256": src_card.get("sha256"),
            "dataset": dataset,
            "seed": seed,
            "population": population,
            "generations": generations,
            "threshold": threshold,
            "runs_per_target": runs_per_target,
            "neat_python": neat_version(),
            "neat_settings": {k: v for k, v in settings.items() if k != "run"},
            "n_images": len(fs),
            "n_reached": n_reached,
            "confidence_reached": {str(t): max(r["confidence"] for r in per_image if r["target"] == t) for t in sorted(set(fs.targets.tolist()))},
            "evolve_wall_time_s": round(evolve_s, 1),
            "device": device_name(device),
            "versions": versions,
            "commit": code_commit(),
            "command": command_line(),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "images": per_image,
        "defenses": {name: dict(s, **meta[name]) for name, s in scores.items()},
        "skipped": skipped,
    }
    write_fooling(paths["results"], results)
    table = summary_table(scores, skipped=skipped)
    return {"results": results, "paths": {k: str(v) for k, v in paths.items()}, "table": table}
