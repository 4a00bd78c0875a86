"""``bench decompose``: the decomposition experiments of Yao et al. 2019, section 4.1.

* ``novel`` on ``ts``: train the c-VAE (:mod:`defenses.cvae`) and a CNN on "left turn", "right turn"
  and "no right turn" only; test on "no left turn". The paper: the CNN calls 99 % of them "left
  turn", the c-VAE recognises 95 % (its decomposition ``[1, 1, 1, 0]``). Figure: the component labels
  ``y`` converging during the eq. (3) optimisation (mean +- 3 std over the test images, paper Fig. 3
  left) and sample decompositions (Fig. 3 right).
* ``overlap`` on ``multi-fmnist`` (or ``multimnist``): exact-set accuracy of the decomposition (both
  components right, nothing else; paper: 65.6 % on multiMNIST, CapsNet 95 %), with sample inputs and
  generations labelled L (truth) / P (prediction) (paper Fig. 4).

Each run writes ``<results>/decomposition/<experiment>-<dataset>.json`` (numbers as numbers, the
command, budgets and wall times) and its figures, then regenerates ``docs/decomposition.md`` from
every such file present (a pure function of them). Models are trained once and kept as
``checkpoints/cvae-<dataset>-<experiment>.safetensors`` (+ card); ``--retrain`` trains again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchcore.io import data_files
from harness import datasets
from harness.store.checkpoints import load_checkpoint, save_checkpoint
from harness.errors import BenchUserError
from harness.store.provenance import code_commit, command_line, device_name, package_versions
from harness.store.results import atomic_write_json
from harness.stats import wilson_interval

EXPERIMENTS = {"novel": ("ts",), "overlap": ("multi-fmnist", "multimnist")}
NOVEL_TRAIN = ("left turn", "right turn", "no right turn")
NOVEL_TEST = "no left turn"
PAPER = {
    "novel": {"cvae": 0.95, "cnn_left_turn": 0.99},
    "overlap": {"cvae": 0.656, "capsnet": 0.95},
}
#: training budgets (CPU): epochs of eq. (1) for the c-VAE and of cross-entropy for the CNN
DEFAULT_EPOCHS = {"novel": 10, "overlap": 4}
#: recipe changes per experiment: ts has only 5400 training images, so batch 32 (4x the Adam steps per epoch)
TRAIN_OVERRIDES = {"novel": {"batch_size": 32}, "overlap": {}}
CNN_EPOCHS = 3
#: epochs of the overlap experiment's supervised CNN reference
OVERLAP_CNN_EPOCHS = 5


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n, "wilson95": [lo, hi]}


def _fmt_rate(r: dict) -> str:
    return f"{_pct(r['rate'])} [{100 * r['wilson95'][0]:.1f}, {100 * r['wilson95'][1]:.1f}] ({r['k']}/{r['n']})"


class ComponentCNN(nn.Module):
    """The CNN baselines: the c-VAE's encoder convolutions for the input size (conv-BN-LeakyReLU) + a linear layer."""

    def __init__(self, num_classes: int, size: int = 64):
        super().__init__()
        from defenses.cvae import _NETS
        from defenses.networks import ConvTrunk, trunk_features

        self.trunk = ConvTrunk(1, _NETS[size][0])
        self.head = nn.Linear(trunk_features(self.trunk, (1, size, size)), num_classes)

    def forward(self, x):
        return self.head(self.trunk(x))


def _subset(split, keep: np.ndarray):
    idx = torch.from_numpy(np.flatnonzero(keep))
    return type("Subset", (), {"x": split.x[idx], "y": split.y[idx]})()


def _shuffled(split, generator: torch.Generator):
    """``split`` in a seeded random order: one permutation for images and labels, so pairs stay pairs."""
    perm = torch.randperm(len(split.x), generator=generator)
    return type("Subset", (), {"x": split.x[perm], "y": split.y[perm]})()


def _train_cnn(train_x, train_t, *, epochs: int, seed: int, progress: bool) -> tuple[nn.Module, float]:
    """Adam 1e-3, batch 128; cross-entropy on class indices ``(N,)`` (sign types), or binary
    cross-entropy per component on multi-hot targets ``(N, n)`` (overlays). Returns the net (eval)
    and the wall time."""
    torch.manual_seed(seed)
    multilabel = train_t.dim() == 2
    net = ComponentCNN(train_t.shape[1] if multilabel else int(train_t.max()) + 1, train_x.shape[-1])
    lossf = (lambda out, t: nn.functional.binary_cross_entropy_with_logits(out, t.float())) if multilabel else nn.functional.cross_entropy
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            loss = lossf(net(train_x[idx]), train_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net, time.perf_counter() - t0


def _select(model, train, val, select_n: int, progress: bool, log) -> tuple[dict, float]:
    """Section 3.2's validation choice of the inference hyperparameters on ``val[:select_n]``."""
    t1 = time.perf_counter()
    # a component present in every training image carries no information (the ts circle; the paper
    # notes its sub-network stays blank): left out of the validation score
    informative = ~(train.y == 1).all(0)
    sel = model.select_decomposition(val.x[:select_n], val.y[:select_n], progress=progress, components=informative)
    log(f"chosen on val[:{select_n}]: {sel['inference']} (exact-set accuracy over components {informative.tolist()}: {sel['val_exact']:.3f})")
    return sel, time.perf_counter() - t1


def _cvae(dataset: str, experiment: str, train, val, *, epochs: int, seed: int, select_n: int, retrain: bool, checkpoint_dir: Path, progress: bool, log,
          reselect: bool = False):
    """Train (or load) the c-VAE of an experiment; hyperparameters chosen on ``val`` (section 3.2).
    ``reselect``: keep a trained checkpoint's weights and choose its hyperparameters again."""
    from defenses.cvae import CVAE

    info = datasets.get_info(dataset)
    model = CVAE(num_classes=info.num_classes, input_shape=info.shape, dataset=dataset, multilabel=info.multilabel)
    path = checkpoint_dir / f"cvae-{dataset}-{experiment}.safetensors"
    if path.is_file() and not retrain:
        card = load_checkpoint(model, path)
        model.load_card(card)
        model.eval()
        log(f"loaded {path} (trained {card.get('epochs')} epochs in {card.get('wall_time_s')} s)")
        if reselect:
            sel, sel_wall = _select(model, train, val, select_n, progress, log)
            card = {k: v for k, v in card.items() if k != "path"}
            card.update(inference=sel["inference"], val_exact=sel["val_exact"], selection=sel["selection"], selection_wall_time_s=round(sel_wall, 1),
                        wall_time_s=round(card.get("train_wall_time_s", 0.0) + sel_wall, 1), reselected_by=command_line(), reselect_commit=code_commit())
            atomic_write_json(path.with_suffix(".json"), card)  # the weights are unchanged: only the card is rewritten
        return model, dict(card, path=str(path))
    config = dict(model.default_train_config(dataset), **TRAIN_OVERRIDES[experiment], epochs=int(epochs), select_n=0)
    log(f"training cvae on {dataset} ({len(train.x)} images, {epochs} epochs, {device_name(torch.device('cpu'))})")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CVAE(num_classes=info.num_classes, input_shape=info.shape, dataset=dataset, multilabel=info.multilabel)
        t0 = time.perf_counter()
        metrics = model.fit(train, None, config=config, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed), progress=progress)
        train_wall = time.perf_counter() - t0
    model.eval()
    sel, sel_wall = _select(model, train, val, select_n, progress, log)
    card = {"defense": "cvae", "dataset": dataset, "experiment": experiment, "command": command_line(), "config": config,
            "epochs": int(epochs), "seed": seed, "wall_time_s": round(train_wall + sel_wall, 1), "train_wall_time_s": round(train_wall, 1),
            "selection_wall_time_s": round(sel_wall, 1), "history": metrics["history"], "train_size": len(train.x),
            "inference": sel["inference"], "val_exact": sel["val_exact"], "selection": sel["selection"],
            "code_commit": code_commit(), "device": device_name(torch.device("cpu")), "versions": package_versions()}
    card = save_checkpoint(model, path, card)
    return model, dict(card, path=str(path))


def _run_decompose(model, x: torch.Tensor, *, batch_size: int = 50, trace: bool = False) -> dict:
    outs = [model.decompose(x[i : i + batch_size], trace=trace) for i in range(0, len(x), batch_size)]
    keys = ["labels", "noise", "y_star", "f", "parts", "x_f", "candidates"] + (["y_trace"] if trace else [])
    return {k: torch.cat([o[k] for o in outs], 1 if k == "y_trace" else 0) for k in keys}


# --- figures ----------------------------------------------------------------------------------

def _plot_trace(y_trace: torch.Tensor, names, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = y_trace.numpy()
    steps = np.arange(t.shape[0])
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, name in enumerate(names):
        m, s = t[:, :, i].mean(1), t[:, :, i].std(1)
        ax.plot(steps, m, label=name)
        ax.fill_between(steps, np.clip(m - 3 * s, 0, 1), np.clip(m + 3 * s, 0, 1), alpha=0.15)
    ax.set_xlabel("eq. (3) optimisation step")
    ax.set_ylabel("relaxed label y_i")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_parts(x, parts, x_f, labels, names, path: Path, title: str, truth=None) -> None:
    """Columns: samples. Rows: input, one per component generation Dec_i(z_i), final x^f (paper Fig. 3 right / Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = len(x), parts.shape[1]
    show_parts = k <= 4
    rows = 2 + (k if show_parts else 0)
    fig, axes = plt.subplots(rows, n, figsize=(1.3 * n, 1.35 * rows), squeeze=False)
    for j in range(n):
        col = [x[j, 0]] + ([parts[j, i, 0] for i in range(k)] if show_parts else []) + [x_f[j, 0]]
        for r, img in enumerate(col):
            ax = axes[r, j]
            ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        on = [str(i) for i in np.flatnonzero(labels[j].numpy())]
        top = f"P {','.join(on) or '-'}"
        if truth is not None:
            top = f"L {','.join(str(i) for i in np.flatnonzero(truth[j].numpy()))}  " + top
        axes[0, j].set_title(top, fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=7)
    if show_parts:
        for i in range(k):
            axes[1 + i, 0].set_ylabel(f"Dec{i}\n{names[i]}", fontsize=6)
    axes[-1, 0].set_ylabel("x^f", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- experiments ------------------------------------------------------------------------------

def run_decompose(experiment: str, dataset: str, *, n: int | None = None, epochs: int | None = None, seed: int = 0, select_n: int = 100,
                  results_dir: str = "results", doc: str = "docs/decomposition.md", checkpoint_dir: str = "checkpoints",
                  retrain: bool = False, reselect: bool = False, progress: bool = True, log=print) -> dict:
    """Run one experiment of section 4.1, write its result JSON and figures, regenerate ``doc``.
    ``reselect``: choose the inference hyperparameters of an existing checkpoint again."""
    if experiment not in EXPERIMENTS:
        raise BenchUserError(f"unknown --experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    if dataset not in EXPERIMENTS[experiment]:
        raise BenchUserError(f"--experiment {experiment} runs on {' or '.join(EXPERIMENTS[experiment])}, not {dataset!r}")
    if n is not None and n < 1:
        raise BenchUserError(f"--n must be >= 1, got {n}")
    epochs = DEFAULT_EPOCHS[experiment] if epochs is None else int(epochs)
    out_dir = Path(results_dir) / "decomposition"
    t_start = time.perf_counter()
    torch_threads = torch.get_num_threads()
    if experiment == "novel":
        res = _novel(dataset, n=n, epochs=epochs, seed=seed, select_n=select_n, out_dir=out_dir, checkpoint_dir=Path(checkpoint_dir), retrain=retrain, progress=progress, log=log, reselect=reselect)
    else:
        res = _overlap(dataset, n=n, epochs=epochs, seed=seed, select_n=select_n, out_dir=out_dir, checkpoint_dir=Path(checkpoint_dir), retrain=retrain, progress=progress, log=log, reselect=reselect)
    res.update({"experiment": experiment, "dataset": dataset, "command": command_line(), "seed": seed, "threads": torch_threads,
                "wall_time_s": round(time.perf_counter() - t_start, 1), "device": device_name(torch.device("cpu")), "code_commit": code_commit()})
    path = out_dir / f"{experiment}-{dataset}.json"
    atomic_write_json(path, res)
    log(f"wrote {path}")
    write_doc(results_dir, doc)
    log(f"wrote {doc}")
    return res


def _novel(dataset, *, n, epochs, seed, select_n, out_dir, checkpoint_dir, retrain, progress, log, reselect=False) -> dict:
    from harness.datasets._synthetic import TS_COMPONENTS, TS_SIGNS, sign_type

    names = list(TS_SIGNS)
    train_types = [names.index(t) for t in NOVEL_TRAIN]
    novel = names.index(NOVEL_TEST)
    tr, va, te = (datasets.load(dataset, s) for s in ("train", "val", "test"))
    t_tr, t_va, t_te = (sign_type(s.y.numpy()) for s in (tr, va, te))
    train = _subset(tr, np.isin(t_tr, train_types))
    val = _subset(va, np.isin(t_va, train_types))
    g = torch.Generator().manual_seed(seed)
    val = _shuffled(val, g)  # mixed types in val[:select_n]
    test_novel = _subset(te, t_te == novel)
    test_seen = _subset(te, np.isin(t_te, train_types))
    if n is not None:
        test_novel.x, test_novel.y = test_novel.x[:n], test_novel.y[:n]
        test_seen.x, test_seen.y = test_seen.x[:n], test_seen.y[:n]
    model, card = _cvae(dataset, "novel", train, val, epochs=epochs, seed=seed, select_n=select_n, retrain=retrain, checkpoint_dir=checkpoint_dir, progress=progress, log=log, reselect=reselect)

    t0 = time.perf_counter()
    dn = _run_decompose(model, test_novel.x, trace=True)
    novel_wall = time.perf_counter() - t0
    want = torch.tensor(TS_SIGNS[NOVEL_TEST])
    ok = (dn["labels"] == want).all(1) & ~dn["noise"]
    informative = ~(train.y == 1).all(0)  # the circle is in every sign
    ok_inf = (dn["labels"] == want)[:, informative].all(1) & ~dn["noise"]
    vec, counts = torch.unique(dn["labels"], dim=0, return_counts=True)
    t0 = time.perf_counter()
    ds = _run_decompose(model, test_seen.x)
    seen_wall = time.perf_counter() - t0
    ok_seen = (ds["labels"] == test_seen.y).all(1) & ~ds["noise"]
    ok_seen_inf = (ds["labels"] == test_seen.y)[:, informative].all(1) & ~ds["noise"]

    # the CNN: a 3-way sign-type classifier trained on the same images
    map_t = {t: i for i, t in enumerate(train_types)}
    y_cnn = torch.tensor([map_t[int(t)] for t in sign_type(train.y.numpy())])
    cnn, cnn_wall = _train_cnn(train.x, y_cnn, epochs=CNN_EPOCHS, seed=seed, progress=progress)
    with torch.no_grad():
        pred_novel = torch.cat([cnn(test_novel.x[i : i + 200]).argmax(1) for i in range(0, len(test_novel.x), 200)])
        pred_seen = torch.cat([cnn(test_seen.x[i : i + 200]).argmax(1) for i in range(0, len(test_seen.x), 200)])
    seen_truth = torch.tensor([map_t[int(t)] for t in sign_type(test_seen.y.numpy())])
    cnn_calls = {NOVEL_TRAIN[i]: int((pred_novel == i).sum()) for i in range(len(NOVEL_TRAIN))}

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_trace = out_dir / f"novel-{dataset}-labels.png"
    _plot_trace(dn["y_trace"], TS_COMPONENTS, fig_trace, f"c-VAE on {len(test_novel.x)} '{NOVEL_TEST}' test images: y during eq. (3), mean ± 3 std")
    fig_parts = out_dir / f"novel-{dataset}-decompositions.png"
    k = min(8, len(test_novel.x))
    _plot_parts(test_novel.x[:k], dn["parts"][:k], dn["x_f"][:k], dn["labels"][:k], TS_COMPONENTS, fig_parts,
                f"'{NOVEL_TEST}' (never seen in training): inputs, component generations Dec_i(z_i), final x^f; P = components found")
    inf = model.config
    return {
        "paper": PAPER["novel"],
        "train_types": list(NOVEL_TRAIN), "test_type": NOVEL_TEST, "train_size": len(train.x),
        "informative_components": [TS_COMPONENTS[i] for i in np.flatnonzero(informative.numpy())],
        "cvae": {"novel_recognised": _rate(int(ok.sum()), len(ok)), "novel_recognised_informative": _rate(int(ok_inf.sum()), len(ok)),
                 "seen_exact_informative": _rate(int(ok_seen_inf.sum()), len(ok_seen)), "novel_rejected_as_noise": _rate(int(dn["noise"].sum()), len(ok)),
                 "novel_decompositions": {str(v.tolist()): int(c) for v, c in zip(vec, counts)},
                 "seen_exact": _rate(int(ok_seen.sum()), len(ok_seen)), "mean_candidates": float(dn["candidates"].float().mean()),
                 "inference": asdict(inf), "checkpoint": {"path": card.get("path"), "sha256": card.get("sha256"), "epochs": card.get("epochs"),
                                                         "train_wall_time_s": card.get("train_wall_time_s"), "selection_wall_time_s": card.get("selection_wall_time_s"),
                                                         "val_exact": card.get("val_exact"), "select_n": card.get("selection", {}).get("n"),
                                                         "config": card.get("config"), "trained_by": card.get("command"), "reselected_by": card.get("reselected_by")},
                 "wall_time_s": {"novel": round(novel_wall, 1), "seen": round(seen_wall, 1)}},
        "cnn": {"novel_called_left_turn": _rate(cnn_calls["left turn"], len(pred_novel)), "novel_calls": cnn_calls,
                "seen_accuracy": _rate(int((pred_seen == seen_truth).sum()), len(pred_seen)), "epochs": CNN_EPOCHS, "train_wall_time_s": round(cnn_wall, 1),
                "arch": "c-VAE 64x64 encoder convolutions + linear, Adam 1e-3, batch 128, cross-entropy on the 3 training sign types"},
        "figures": {"labels": fig_trace.name, "decompositions": fig_parts.name},
    }


def _overlap(dataset, *, n, epochs, seed, select_n, out_dir, checkpoint_dir, retrain, progress, log, reselect=False) -> dict:
    tr, va, te = (datasets.load(dataset, s) for s in ("train", "val", "test"))
    names = datasets.get_info(dataset).class_names
    model, card = _cvae(dataset, "overlap", tr, va, epochs=epochs, seed=seed, select_n=select_n, retrain=retrain, checkpoint_dir=checkpoint_dir, progress=progress, log=log, reselect=reselect)
    n = len(te.x) if n is None else min(n, len(te.x))
    t0 = time.perf_counter()
    d = _run_decompose(model, te.x[:n])
    wall = time.perf_counter() - t0
    truth = te.y[:n]
    ok = (d["labels"] == truth).all(1) & ~d["noise"]
    ones = d["labels"].sum(1)
    # both true components among the chosen ones (a looser view of the same decisions)
    both_found = ((d["labels"] * truth).sum(1) == 2) & ~d["noise"]
    # a supervised reference on the same overlays (the paper quotes CapsNet's 95% on multiMNIST):
    # how separable the two items are for a discriminative model given the count (top-2 components)
    cnn, cnn_wall = _train_cnn(tr.x, tr.y, epochs=OVERLAP_CNN_EPOCHS, seed=seed, progress=progress)
    with torch.no_grad():
        logits = torch.cat([cnn(te.x[:n][i : i + 200]) for i in range(0, n, 200)])
    top2 = torch.zeros_like(truth).scatter(1, logits.topk(2, dim=1).indices, 1)
    cnn_ok = (top2 == truth).all(1)
    fig = out_dir / f"overlap-{dataset}-samples.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    good, bad = torch.nonzero(ok).flatten()[:6], torch.nonzero(~ok).flatten()[:6]
    pick = torch.cat([good, bad])
    if len(pick):
        _plot_parts(te.x[:n][pick], d["parts"][pick], d["x_f"][pick], d["labels"][pick], names, fig,
                    f"{dataset}: {len(good)} right (left), {len(bad)} wrong (right); first row inputs, second the generation x^f", truth=truth[pick])
    return {
        "paper": PAPER["overlap"], "train_size": len(tr.x),
        "cvae": {"exact_set_accuracy": _rate(int(ok.sum()), n), "both_true_components_found": _rate(int(both_found.sum()), n),
                 "rejected_as_noise": _rate(int(d["noise"].sum()), n),
                 "predicted_ones": {str(int(k)): int((ones == k).sum()) for k in torch.unique(ones)},
                 "mean_candidates": float(d["candidates"].float().mean()), "inference": asdict(model.config),
                 "checkpoint": {"path": card.get("path"), "sha256": card.get("sha256"), "epochs": card.get("epochs"),
                                "train_wall_time_s": card.get("train_wall_time_s"), "selection_wall_time_s": card.get("selection_wall_time_s"),
                                "val_exact": card.get("val_exact"), "select_n": card.get("selection", {}).get("n"),
                                "trained_by": card.get("command"), "reselected_by": card.get("reselected_by")},
                 "wall_time_s": round(wall, 1)},
        "cnn": {"exact_set_accuracy": _rate(int(cnn_ok.sum()), n), "epochs": OVERLAP_CNN_EPOCHS, "train_wall_time_s": round(cnn_wall, 1),
                "arch": f"c-VAE {te.x.shape[-1]}x{te.x.shape[-1]} encoder convolutions + linear, Adam 1e-3, batch 128, binary cross-entropy per item class, the top 2 classes taken"},
        "figures": {"samples": fig.name},
    }


# --- the document -----------------------------------------------------------------------------

def write_doc(results_dir: str, doc: str) -> str:
    """Render ``doc`` from every ``<results_dir>/decomposition/*.json`` (a pure function of them)."""
    folder = Path(results_dir) / "decomposition"
    rel = Path("..") / folder  # figures are referenced relative to docs/
    lines = ["# Decomposition experiments (Yao et al. 2019, section 4.1)", "",
             "Generated by `bench decompose` from `" + str(folder) + "/*.json`; do not edit by hand. Every number comes",
             "from the run whose command, budget and wall time stand next to it; intervals are 95% Wilson intervals.",
             "The c-VAE is `defenses/cvae.py` (eq. 1 training, eq. 3 inference, the section 3.2 logic flow), the data",
             "sets are generated by `harness/datasets/_synthetic.py` (seeded; see `bench list datasets`).", ""]
    files = data_files(folder, "*.json")
    if not files:
        lines.append("No results yet: run `bench decompose --experiment novel --dataset ts`.")
    for f in files:
        r = json.loads(f.read_text(encoding="utf-8"))
        c = r["cvae"]
        ck = c["checkpoint"]
        budget = (f"c-VAE: {ck['epochs']} epochs of eq. (1) ({ck['train_wall_time_s']} s), hyperparameters chosen on {ck['select_n']} validation "
                  f"images ({ck['selection_wall_time_s']} s; validation exact-set accuracy {ck['val_exact']:.3f}); inference {c['inference']['steps']} "
                  f"eq. (3) steps + {c['inference']['refine_steps']} refinement steps per candidate; {r['device']}, {r['threads']} thread(s); "
                  f"whole command {r['wall_time_s']} s; commit {str(r.get('code_commit'))[:10]}")
        if ck.get("trained_by") and ck["trained_by"] != r["command"]:
            budget += f"; the c-VAE checkpoint was trained by `{ck['trained_by']}`"
        if ck.get("reselected_by") and ck["reselected_by"] != r["command"]:
            budget += f", its hyperparameters chosen again by `{ck['reselected_by']}`"
        inf = c["inference"]
        chosen = ", ".join(f"{k} = {inf[k]:.4g}" if isinstance(inf[k], float) else f"{k} = {inf[k]}" for k in ("beta", "b", "c", "y_lower", "y_upper", "noise_threshold"))
        if r["experiment"] == "novel":
            lines += [f"## Novel component combinations ({r['dataset']})", "",
                      f"Trained on {', '.join(repr(t) for t in r['train_types'])} ({r['train_size']} images); tested on {r['cnn']['novel_called_left_turn']['n']} "
                      f"'{r['test_type']}' test images, which neither model saw in training.", "",
                      "| Model | Result on the novel sign | Paper | On the seen sign types (test) |", "|---|---|---|---|",
                      f"| c-VAE (decomposition = [1, 1, 1, 0]) | recognised {_fmt_rate(c['novel_recognised'])} | 95% | exact set {_fmt_rate(c['seen_exact'])} |",
                      f"| c-VAE, ignoring the circle (in every sign) | {', '.join(r['informative_components'])} right: {_fmt_rate(c['novel_recognised_informative'])} | | {_fmt_rate(c['seen_exact_informative'])} |",
                      f"| CNN (3 sign types) | called 'left turn' {_fmt_rate(r['cnn']['novel_called_left_turn'])} | 99% | accuracy {_fmt_rate(r['cnn']['seen_accuracy'])} |", "",
                      f"c-VAE decompositions of the novel sign: {', '.join(f'{k}: {v}' for k, v in c['novel_decompositions'].items())}; rejected as noise "
                      f"{_fmt_rate(c['novel_rejected_as_noise'])}; {c['mean_candidates']:.2f} candidate label sets per image on average. "
                      f"CNN calls: {', '.join(f'{k}: {v}' for k, v in r['cnn']['novel_calls'].items())}.", "",
                      f"Command: `{r['command']}`. Budget: {budget}. CNN: {r['cnn']['arch']}, {r['cnn']['epochs']} epochs ({r['cnn']['train_wall_time_s']} s).", "",
                      f"Chosen on the validation split (exact-set accuracy over {', '.join(r['informative_components'])}; the circle, in every "
                      f"training sign, carries no information and is left out of the score): {chosen}.", "",
                      f"![component labels during inference]({rel / r['figures']['labels']})", "",
                      f"![decompositions of the novel sign]({rel / r['figures']['decompositions']})", ""]
        else:
            lines += [f"## Overlapping objects ({r['dataset']})", "",
                      f"Trained on {r['train_size']} overlays; tested on {c['exact_set_accuracy']['n']} test overlays (two items of different classes, ~80% overlap).", "",
                      "| Model | Exact-set accuracy | Paper (multiMNIST) |", "|---|---|---|",
                      f"| c-VAE | {_fmt_rate(c['exact_set_accuracy'])} | 65.6% |"]
            if r.get("cnn"):
                lines.append(f"| CNN, supervised on the overlays, top 2 classes (a reference for how separable they are) | {_fmt_rate(r['cnn']['exact_set_accuracy'])} | |")
            lines += ["| CapsNet (paper, not run here) | | 95% |", "",
                      f"Both true components among the chosen ones: {_fmt_rate(c['both_true_components_found'])}; rejected as noise {_fmt_rate(c['rejected_as_noise'])}; "
                      f"number of components chosen: {', '.join(f'{k}: {v}' for k, v in c['predicted_ones'].items())}; "
                      f"{c['mean_candidates']:.2f} candidate label sets per image on average. Inference wall time {c['wall_time_s']} s.", "",
                      f"Command: `{r['command']}`. Budget: {budget}."
                      + (f" CNN: {r['cnn']['arch']}, {r['cnn']['epochs']} epochs ({r['cnn']['train_wall_time_s']} s)." if r.get("cnn") else ""), "",
                      f"Chosen on the validation split: {chosen}.", "",
                      f"![sample decompositions]({rel / r['figures']['samples']})", ""]
    text = "\n".join(lines).rstrip() + "\n"
    path = Path(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return text
