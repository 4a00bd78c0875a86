"""``docs/synthesis.md``: the image-synthesis measurement (:mod:`harness.experiments.synthesis`) as tables and grids.

A pure function of ``<results>/<dataset>/synthesis/*.json`` (written by ``bench synthesize``), plus
one figure it draws next to them (``generate-loss.png``, the mean target loss per PGD iteration, the
paper's convergence monitoring of section 4.1.1). Every number carries its command and budget.
Rates get Wilson 95% intervals; a defense is compared with ``cnn`` (the standard model) by McNemar's
test on the judge's per-seed verdicts over the seeds both were run on (paired: same seed image and
target), as :func:`harness.stats.mcnemar_test` does for attack results.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tabulate import tabulate

from benchcore.io import data_files
from harness import stats
from harness.experiments.synthesis import PAPER_TABLE1, SEED_KINDS, TASKS, save_small_png, synthesis_dir
from harness.report.tables import MISSING, defense_label, defense_order, format_cell, format_pvalue

LOSS_PLOT = "generate-loss.png"
REFERENCE = "cnn"
#: canonical rows first (the issue's five defenses), then the rest alphabetically
ORDER = ("cnn", "adv-l2", "adv-linf", "binary-cnn", "eabs")


def load_synthesis(results_dir: str | os.PathLike, dataset: str) -> dict[str, dict]:
    """``{key: data}`` of every synthesis result file, in display order."""
    d = synthesis_dir(results_dir, dataset)
    out = {}
    for p in data_files(d, "*.json"):
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "tasks" in data:
            out[data["manifest"].get("key", p.stem)] = data
    def rank(k):
        base = out[k]["manifest"]["defense"]
        return (ORDER.index(base) if base in ORDER else len(ORDER), defense_order([base]), k)
    return {k: out[k] for k in sorted(out, key=rank)}


def _rate(k: int | None, n: int) -> str:
    if k is None or not n:
        return MISSING
    lo, hi = stats.wilson_interval(int(k), int(n))
    return format_cell(k / n, lo, hi)


def _label(key: str, data: dict) -> str:
    base = data["manifest"]["defense"]
    label = defense_label(base)
    return label if key == base else f"{label} ({key[len(base) + 1:] if key.startswith(base + '-') else key})"


def _fmt(v, nd=2) -> str:
    return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _judges(results: dict[str, dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for data in results.values():
        for task in ("generate", "translate"):
            for lb, info in ((data["tasks"].get(task) or {}).get("judges") or {}).items():
                out.setdefault(lb, info)
    return out


def _paired(results: dict[str, dict], key: str, judge: str, kind: str | None, task: str = "generate", reference: str = REFERENCE):
    """McNemar of ``key`` vs ``reference``: the judge's target verdicts on the seeds both synthesised from."""
    ref = results.get(reference)
    if ref is None or key == reference or task not in ref["tasks"] or task not in results[key]["tasks"]:
        return None
    ident = (lambda r: (r["kind"], r["target"], r["seed_index"])) if task == "generate" else (lambda r: (r["index"], r["target"]))

    def verdicts(data):
        out = {}
        for r in data["tasks"][task]["images"]:
            if kind is not None and r.get("kind") != kind:
                continue
            j = (r.get("judge") or {}).get(judge) or {}
            if j.get("final") is not None:
                out[ident(r)] = j["final"] == r["target"]
        return out

    a, b = verdicts(results[key]), verdicts(ref)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    res = stats.mcnemar_test([b[c] for c in common], [a[c] for c in common])
    return res


def _commands(results: dict[str, dict], task: str) -> list[str]:
    lines = []
    for key, data in results.items():
        e = data["tasks"].get(task)
        if e:
            lines.append(f"* {_label(key, data)}: `{e['command']}` — {e['budget']}; {e['wall_time_s']} s on {e['device']} (commit {e['commit'][:12]})")
    return lines


def _settings_table(results: dict[str, dict]) -> str:
    rows = []
    seen = {}
    for data in results.values():
        for task, e in data["tasks"].items():
            for k, s in e["settings"].items():
                if s.get("step_cap") is None:
                    seen.setdefault(k, s)
    for name in ("uniform", "univariate", "multivariate", "inpaint", "superres", "translate"):
        s = seen.get(name)
        if s is None:
            continue
        task = name if name in TASKS else "generate"
        p = PAPER_TABLE1[task]
        paper_steps = f"{p.steps}" if task != "generate" else f"60-100 (section 4.1.1: {s.get('full_steps') or s['steps']} for {name} seeds)"
        rows.append([name if task != "generate" else f"generate ({name} seeds)", f"{p.eps:g}", f"{p.alpha:g}", paper_steps,
                     f"{s['eps']:.3f}", f"{s['alpha']:.4f}", s["steps"]])
    return tabulate(rows, headers=["Task", "paper ε", "paper α", "paper steps", "ε here", "α here", "steps here"], tablefmt="github", disable_numparse=True)


def _judge_cells(results, key, e, s, lb, kind, task) -> list[str]:
    j = (s.get("judge") or {}).get(lb)
    if j is None:
        return ["(same model)" if lb in e.get("skipped_judges", []) else MISSING] * 2 + [MISSING]
    m = _paired(results, key, lb, kind, task=task)
    return [_rate(j["seed_target"], s["n"]), _rate(j["final_target"], s["n"]), MISSING if m is None else f"{format_pvalue(m.pvalue)} ({m.b01}/{m.b10}, n={m.n})"]


def _generation_tables(results, judges) -> list[str]:
    """One table of the synthesiser's own figures, then one per judge."""
    own, per_judge = [], {lb: [] for lb in judges}
    for key, data in results.items():
        e = data["tasks"].get("generate")
        if not e:
            continue
        for kind in [k for k in SEED_KINDS if k in e["summary"]] + ["all"]:
            s = e["summary"][kind]
            own.append([_label(key, data), kind, s["n"], _rate(s["self_target"], s["n"]), f"{_fmt(s['mean_loss_start'])} → {_fmt(s['mean_loss_end'])}", _fmt(s["mean_l2"])])
            for lb in judges:
                per_judge[lb].append([_label(key, data), kind, s["n"], *_judge_cells(results, key, e, s, lb, None if kind == "all" else kind, "generate")])
    out = [tabulate(own, headers=["Defense", "Seeds", "n", "self → target", "CE loss start → end", "mean L2 moved"], tablefmt="github", disable_numparse=True), ""]
    for lb, rows in per_judge.items():
        out += [f"Judge `{lb}`:", "", tabulate(rows, headers=["Defense", "Seeds", "n", "seed = target", "PGD result = target", "McNemar vs cnn: p (b/w, n)"],
                                                tablefmt="github", disable_numparse=True), ""]
    return out


def _translation_tables(results, judges) -> list[str]:
    own, per_judge = [], {lb: [] for lb in judges}
    for key, data in results.items():
        e = data["tasks"].get("translate")
        if not e:
            continue
        s = e["summary"]["all"]
        own.append([_label(key, data), s["n"], _rate(s["self_target"], s["n"]), f"{_fmt(s['mean_loss_start'])} → {_fmt(s['mean_loss_end'])}", _fmt(s["mean_l2"])])
        for lb in judges:
            per_judge[lb].append([_label(key, data), s["n"], *_judge_cells(results, key, e, s, lb, None, "translate")])
    out = [tabulate(own, headers=["Defense", "n", "self → target", "CE loss start → end", "mean L2 travelled"], tablefmt="github", disable_numparse=True), ""]
    for lb, rows in per_judge.items():
        out += [f"Judge `{lb}`:", "", tabulate(rows, headers=["Defense", "n", "source image = target", "PGD result = target", "McNemar vs cnn: p (b/w, n)"],
                                                tablefmt="github", disable_numparse=True), ""]
    return out


def _inpaint_table(results) -> str:
    rows = []
    for key, data in results.items():
        e = data["tasks"].get("inpaint")
        if not e:
            continue
        s = e["summary"]
        rows.append([_label(key, data), s["n"], f"{s['patch']}x{s['patch']}", f"{_fmt(s['mean_l2_patch'])} vs {_fmt(s['mean_l2_patch_mean_fill'])}",
                     f"{_fmt(s['mean_psnr_patch'])} vs {_fmt(s['mean_psnr_patch_mean_fill'])}", _rate(s["improved"], s["n"]), _rate(s["self_correct"], s["n"]),
                     f"{s['max_change_outside']:.1e}" if s.get("max_change_outside") is not None else MISSING])
    return tabulate(rows, headers=["Defense", "n", "patch", "patch L2: PGD vs mean fill", "patch PSNR dB: PGD vs mean fill", "PGD closer than mean fill",
                                   "self → true class", "max change outside patch"], tablefmt="github", disable_numparse=True)


def _superres_table(results) -> str:
    rows = []
    for key, data in results.items():
        e = data["tasks"].get("superres")
        if not e:
            continue
        s = e["summary"]
        rows.append([_label(key, data), s["n"], f"{_fmt(s['mean_psnr'])} vs {_fmt(s['mean_psnr_bilinear'])}", f"{_fmt(s['mean_l2'])} vs {_fmt(s['mean_l2_bilinear'])}",
                     _rate(s["improved"], s["n"]), _rate(s["self_correct"], s["n"])])
    return tabulate(rows, headers=["Defense", "n", "PSNR dB: PGD vs bilinear", "L2 to original: PGD vs bilinear", "PGD PSNR > bilinear", "self → true class"],
                    tablefmt="github", disable_numparse=True)


def plot_loss_curves(results: dict[str, dict], path: str | os.PathLike) -> Path | None:
    """Mean target cross-entropy per PGD iteration, one panel per seed distribution, one line per defense."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = {k: d["tasks"]["generate"]["loss_curve"] for k, d in results.items() if "generate" in d["tasks"]}
    if not curves:
        return None
    kinds = [k for k in SEED_KINDS if any(k in c for c in curves.values())]
    path = Path(path)
    with rc_context({"svg.hashsalt": "harness-plots", "path.simplify": True}):
        fig = Figure(figsize=(3.0 * len(kinds), 2.6), dpi=90)
        FigureCanvasAgg(fig)
        for i, kind in enumerate(kinds):
            ax = fig.add_subplot(1, len(kinds), i + 1)
            for key, c in curves.items():
                if kind in c:
                    ax.plot(range(len(c[kind])), [v if v is not None else float("nan") for v in c[kind]], label=_label(key, results[key]), linewidth=1.2)
            ax.set_title(f"{kind} seeds", fontsize=9)
            ax.set_xlabel("PGD iteration", fontsize=8)
            if i == 0:
                ax.set_ylabel("mean CE of the target", fontsize=8)
            ax.set_yscale("symlog", linthresh=0.1)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.axes[-1].legend(fontsize=6, loc="upper right")
        fig.tight_layout()
        save_small_png(fig, path, grey=False)
    return path


def _claims(results: dict[str, dict], judges: dict[str, dict], reference: str = REFERENCE) -> list[str]:
    """The paper's claim, checked mechanically: every defense against ``reference`` on the judges'
    target rates (paired McNemar on the seeds both were run on)."""
    lines = []
    if reference not in results or "generate" not in results[reference]["tasks"]:
        return [f"* No `{reference}` generation results: this comparison needs them."]
    for lb in judges:
        for task, kind in (("generate", "uniform"), ("generate", "all"), ("translate", None)):
            ref = results[reference]["tasks"].get(task)
            if not ref:
                continue
            rs = ref["summary"]["all" if kind is None else kind]
            rj = (rs.get("judge") or {}).get(lb)
            if rj is None:
                continue
            what = f"{task}" + (f" ({kind} seeds)" if kind else "")
            parts = []
            for key, data in results.items():
                if key == reference or task not in data["tasks"]:
                    continue
                s = data["tasks"][task]["summary"].get("all" if kind is None else kind)
                j = (s or {}).get("judge", {}).get(lb) if s else None
                if j is None:
                    continue
                m = _paired(results, key, lb, kind if task == "generate" and kind != "all" else None, task=task, reference=reference)
                if m is None:
                    continue
                verdict = f"above {reference}" if m.b01 > m.b10 else f"below {reference}" if m.b01 < m.b10 else f"same as {reference}"
                sig = "significant at 0.01" if m.pvalue < 0.01 else "not significant"
                p = format_pvalue(m.pvalue)
                parts.append(f"{_label(key, data)} {_rate(j['final_target'], s['n'])} ({verdict}; McNemar p {p if p.startswith('<') else '= ' + p}, {sig}; {m.n} paired seeds)")
            if parts:
                lines.append(f"* judge `{lb}`, {what}: {reference} {_rate(rj['final_target'], rs['n'])}; " + "; ".join(parts) + ".")
    return lines


def render_synthesis(results_dir: str | os.PathLike, dataset: str, out_path: str | os.PathLike) -> str:
    """The markdown of ``docs/synthesis.md`` (draws ``generate-loss.png`` next to the result files)."""
    results = load_synthesis(results_dir, dataset)
    out_dir = Path(out_path).parent
    sdir = synthesis_dir(results_dir, dataset)

    def rel(p: Path) -> str:
        return os.path.relpath(p, out_dir).replace(os.sep, "/")

    lines = [
        f"# Image synthesis with a classifier's gradient ({dataset})",
        "",
        "Generated by `bench synthesize --report` from `" + rel(sdir) + "/*.json`; do not edit by hand. Method:",
        "Mastrocinque & Gibson, *Exploring Image Synthesis Using A Robust Classifier* (sections 3.2-3.4, Table 1),",
        "after Santurkar et al. 2019: targeted L2 PGD (normalised gradient step α, projection to ‖x′ − x₀‖₂ ≤ ε,",
        "clamp to [0, 1]) from a seed towards a class. A robust model's gradient should paint class features an",
        "independent judge recognises; a standard model's gradient should change the image imperceptibly, fooling",
        "itself but not the judge. Code: `harness/experiments/synthesis.py`; this page: `harness/report/synthesis_report.py`.",
        "",
    ]
    if not results:
        return "\n".join(lines + ["No synthesis results yet: run `bench synthesize --defense cnn --task all`.", ""])
    judges = _judges(results)
    lines += [
        "## Settings (paper Table 1 scaled to this data set)",
        "",
        "ε and α of Table 1 are L2 norms on 224×224 RGB images (150,528 values); the same per-pixel change has an",
        "L2 norm √(values) times larger, so both are multiplied by √(C·H·W / 150528) (0.0722 for 28×28 grey).",
        "Step counts are the paper's (generation: 100 for uniform / univariate seeds, 60 for multivariate, section",
        "4.1.1). Where a defense's budget says \"capped … by --max-steps\", its steps were capped and α raised so that",
        "α·steps stays the paper's path length. Inpainting patch: the paper's 60/224 of the side; the patch",
        "is filled with the training-set mean image (the *mean fill* baseline) and PGD may change only the patch",
        "(eq. 4 with a hard mask). Super-resolution: 2× area downsampling, bilinear upsampling (the baseline), PGD in",
        "the ε ball around it (eq. 3). Targets: generation — the seed's class; inpainting / super-resolution — the true",
        "class; translation — class B for images of class A.",
        "",
        _settings_table(results),
        "",
        "Seeds (section 3.2): uniform on [0, 1); per-class *univariate* normal (per-pixel mean and standard deviation)",
        "and per-class *multivariate* normal (mean and full covariance, sampled as mean + U·diag(√λ)·z from its",
        "eigen-decomposition), both fitted on the training split (54,000 images) at full resolution; clamped to [0, 1].",
        "The same seeds (generator seeded by `--seed`) go to every defense.",
        "",
        "## Judges",
        "",
        "A judge is a classifier not used for synthesis. Its verdict on the *seed* is shown next to its verdict on",
        "the PGD result: the class-conditional seeds already look like their class, so only the change matters.",
        "",
    ]
    rows = [[f"`{lb}`", info.get("defense"), info.get("train_seed"), info.get("train_epochs"), info.get("clean_test_n", 0),
             _rate(round((info.get("clean_test_acc") or 0) * info.get("clean_test_n", 0)), info.get("clean_test_n", 0)),
             ", ".join(f"{k}={v}" for k, v in (info.get("options") or {}).items()) or MISSING] for lb, info in judges.items()]
    lines += [tabulate(rows, headers=["Judge", "defense", "training seed", "epochs", "test images", "clean accuracy (Wilson 95%)", "inference options"], tablefmt="github", disable_numparse=True),
              "", "A judge that is the synthesising model itself (same checkpoint) is not used for that model (`same model`).",
              "Inference options shrink a judge's own inference budget (randomized judges decide in one draw from a fixed",
              "seed); its clean accuracy above is measured with them.", ""]

    lines += ["## Generation (eq. 2)", "",
              "`self → target`: the synthesising model's own verdict (a standard model fools itself easily). `judge …: seed =",
              "target` / `PGD = target`: the judge's verdict before and after PGD. McNemar: paired on the same seeds against",
              "cnn; (b/w) = seeds the judge accepts for this defense but not for cnn / for cnn but not for this defense;",
              "`*` = p < 0.01. All rates with Wilson 95% intervals.", "",
              *_generation_tables(results, judges), "Commands and budgets:", "", *_commands(results, "generate"), ""]
    loss_png = plot_loss_curves(results, sdir / LOSS_PLOT)
    if loss_png is not None:
        lines += ["Loss convergence (mean target cross-entropy per iteration, the paper's section 4.1.1 monitoring; symlog scale):", "",
                  f"![loss curves]({rel(loss_png)})", ""]
    lines += ["## Inpainting (eq. 4, hard mask)", "", _inpaint_table(results), "", "Commands and budgets:", "", *_commands(results, "inpaint"), "",
              "## Super-resolution (eq. 3)", "", _superres_table(results), "", "Commands and budgets:", "", *_commands(results, "superres"), "",
              "## Translation (eq. 2 from a real image)", ""]
    pairs = next((d["tasks"]["translate"].get("pairs") for d in results.values() if "translate" in d["tasks"]), None)
    if pairs:
        from harness import datasets

        names = datasets.get_info(dataset).class_names
        lines += ["Pairs: " + ", ".join(f"{names[a] if a < len(names) else a} → {names[b] if b < len(names) else b}" for a, b in pairs) + ".", ""]
    lines += [*_translation_tables(results, judges), "Commands and budgets:", "", *_commands(results, "translate"), "",
              "## The paper's claim, checked", "",
              "Robust models synthesise class features an independent judge recognises, standard models do not (paper",
              "sections 4.1.2 and 5). Per judge, the final target rate of each defense against the standard `cnn` on the",
              "same seeds (uniform seeds: the only generation seeds the judges do not already accept; all seeds;",
              "translation). The rate shown is over each defense's own seeds; the McNemar test uses only the seeds both",
              "defenses ran on (fewer for a defense with a smaller budget):", "",
              *_claims(results, judges), "",
              "The same against the adversarially trained `adv-l2` (a robust reference: does a defense synthesise like a",
              "robust model?):", "",
              *_claims(results, judges, reference="adv-l2"), "",
              "## Grids", "",
              "Generation: per seed distribution the seed (one per class) and the PGD result; inpainting and",
              "super-resolution: original / corrupted / PGD; translation: five sources, then their translations.", ""]
    for key, data in results.items():
        for task in TASKS:
            e = data["tasks"].get(task)
            if e and (sdir / e["grid"]).is_file():
                lines += [f"**{_label(key, data)} — {task}** ({e['budget']})", "", f"![{key} {task}]({rel(sdir / e['grid'])})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_synthesis_report(results_dir: str | os.PathLike, dataset: str, out_path: str | os.PathLike) -> bool:
    """Write ``docs/synthesis.md`` (and the loss plot); return whether the document changed."""
    from harness.report.reproduction import write_if_changed

    return write_if_changed(out_path, render_synthesis(results_dir, dataset, out_path))
