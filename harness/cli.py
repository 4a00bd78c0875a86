"""The ``bench`` command: a thin layer that builds a config and calls one library function.

User errors (unknown names, values out of range, missing data, bad checkpoints) print one line
``bench: error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from harness.errors import BenchUserError

DEFAULT_RESULTS = "results"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise BenchUserError(message)


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum`` (``what`` names the range in the error)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _threads(text: str) -> int | str:
    """``bench sweep --threads``: ``auto`` or a positive integer."""
    return "auto" if text.strip().lower() == "auto" else _int_at_least(1, "a positive integer or auto")(text)


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)``; the value is read as a TOML literal (``5``, ``0.05``,
    ``true``, ``"l2"``) and kept as a string when it is not one (``norm=l2``)."""
    import tomllib

    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier() or not raw.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. steps=5), got {text!r}")
    if key == "arch":
        raise argparse.ArgumentTypeError("use --arch for the network, not --option arch=...")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _eps(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"eps must be a finite number >= 0, got {text}")
    return v


def _duration(text: str) -> float:
    """``2h30m``, ``90m``, ``45s``, ``5400`` (seconds) -> seconds (> 0)."""
    import re

    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text.lower())
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration like 2h30m, 90m, 45s or 5400 (seconds), got {text!r}")
    h, mins, secs = (float(g or 0) for g in m.groups())
    total = 3600 * h + 60 * mins + secs
    if total <= 0:
        raise argparse.ArgumentTypeError(f"the duration must be positive, got {text!r}")
    return total


def _deadline(text: str) -> float:
    """``HH:MM`` (today, local time) or an ISO 8601 date-time (local time unless it has an offset)
    -> seconds since the epoch; a moment already past is an error."""
    import datetime as dt

    now = dt.datetime.now().astimezone()
    try:
        if ":" in text and "-" not in text and "T" not in text.upper():
            t = dt.time.fromisoformat(text.strip())
            when = dt.datetime.combine(now.date(), t).astimezone()
        else:
            when = dt.datetime.fromisoformat(text.strip())
            when = when.astimezone() if when.tzinfo is None else when
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HH:MM (today) or an ISO date-time like 2026-12-03T17:30, got {text!r}") from None
    if when <= now:
        tomorrow = f"; for that time tomorrow give the date: {when + dt.timedelta(days=1):%Y-%m-%dT%H:%M}" if when.date() == now.date() and "-" not in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is already past (now {now:%Y-%m-%d %H:%M}){tomorrow}")
    return when.timestamp()


CHECK_BLOCK_HELP = ("samples per resumable block of the budget check (default 10, sized for a CPU core, where a block's time grows with its samples); "
                    "on a GPU a larger block costs about as much as a small one, e.g. 20-30 so a restart of the check is one block")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Adversarial-robustness benchmark harness (thesis-style evaluation with verified attacks).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="evaluate a defense (trains it first when no checkpoint exists)")
    r.add_argument("--defense", required=True)
    r.add_argument("--dataset", default="fmnist")
    r.add_argument("--norm", choices=["linf", "l2"], required=True)
    r.add_argument("--suite", default="quick", help="attack suite in threat_models/suites (quick, paper)")
    r.add_argument("--n", type=_positive_int, default=200, help="number of test samples (default 200)")
    r.add_argument("--seed", type=_nonneg_int, default=0)
    r.add_argument("--eps", type=_eps, default=None, help="override the dataset's default eps")
    r.add_argument("--attacks", default=None, help="comma-separated subset of the suite's attacks")
    r.add_argument("--batch-size", type=_positive_int, default=100)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--results-dir", default=DEFAULT_RESULTS)
    r.add_argument("--fresh", action="store_true", help="recompute instead of resuming")
    r.add_argument("--no-train", action="store_true", help="fail instead of training when no checkpoint exists")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--arch", default=None, help="network of the CNN family: table2.1 (default), resnet18 or resnet50 (32x32 RGB data); results go to <defense>-<arch>.json")
    r.add_argument("--check-budget", type=_positive_int, nargs="?", const=100, default=0, metavar="N", help="after the attacks, rerun each gradient attack with a step budget on the first N samples (default 100) with twice the steps and 5 restarts and record the accuracy difference (budget saturation check)")
    r.add_argument("--check-block", type=_positive_int, default=0, metavar="N", help=CHECK_BLOCK_HELP)
    r.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="a defense option (repeatable), e.g. --option steps=5 for vsmooth-*; results go to <defense>-<key><value>.json")

    t = sub.add_parser("train", help="train a defense and write a checkpoint + model card")
    t.add_argument("--defense", required=True)
    t.add_argument("--dataset", default="fmnist")
    t.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epoch count (with --resume: epochs to add)")
    t.add_argument("--out", default=None, help="checkpoint directory (default: ~/.cache/bench/checkpoints)")
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--resume", action="store_true", help="continue the existing checkpoint (the one in --out if there is one, else the one bench run would load) for --epochs more epochs; ABS/E-ABS continue exactly from the training state saved every epoch (optimisers, schedule, random state; without --epochs a stopped run finishes its planned epochs), other defenses with a fresh optimiser")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="config_set", help="override a key of the training recipe (repeatable; recorded in the card), e.g. --set lr_schedule=cosine --set anneal_epochs=20")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: all cores); on a shared machine give the free cores (and set OMP_WAIT_POLICY=PASSIVE)")
    t.add_argument("--arch", default=None, help="network of the CNN family: table2.1 (default), resnet18 or resnet50 (32x32 RGB data); checkpoint <defense>-<arch>-<dataset>")

    tb = sub.add_parser("table", help="print the thesis-style table with Wilson intervals and McNemar p-values")
    tb.add_argument("--dataset", default="fmnist")
    tb.add_argument("--norm", choices=["linf", "l2"], required=True)
    tb.add_argument("--results-dir", default=DEFAULT_RESULTS)

    pl = sub.add_parser("plot", help="plot accuracy vs eps of an eps-sweep suite's results (e.g. --suite fgm-sweep)")
    pl.add_argument("--dataset", default="fmnist")
    pl.add_argument("--norm", choices=["linf", "l2"], required=True)
    pl.add_argument("--results-dir", default=DEFAULT_RESULTS)
    pl.add_argument("--out", default=None, help="PNG (or SVG) path (default: <results-dir>/<dataset>/<norm>/eps_sweep.png)")

    lb = sub.add_parser("leaderboard", help="regenerate leaderboard.md from results/")
    lb.add_argument("--results-dir", default=DEFAULT_RESULTS)
    lb.add_argument("--out", default="leaderboard.md")
    lb.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")
    lb.add_argument("--no-plots", action="store_true", help="do not redraw the robustness curves (<results-dir>/<dataset>/<norm>/robustness_curve.png)")

    ne = sub.add_parser("neat", help="evolve NEAT/CPPN fooling images against a source model and score defenses on them")
    ne.add_argument("--source", default="cnn")
    ne.add_argument("--dataset", default="fmnist")
    ne.add_argument("--defenses", default="cnn", help="comma-separated defenses to score (default: cnn)")
    ne.add_argument("--population", type=_positive_int, default=None)
    ne.add_argument("--generations", type=_positive_int, default=None)
    ne.add_argument("--threshold", type=float, default=None, help="source confidence to reach (default 0.9)")
    ne.add_argument("--runs-per-target", type=_positive_int, default=None, help="independent populations (images) per target class (default 1)")
    ne.add_argument("--seed", type=_nonneg_int, default=0)
    ne.add_argument("--device", default="auto")
    ne.add_argument("--out", default="results", help="writes <out>/<dataset>/neat/{fooling.png,fooling.safetensors,results.json}")
    ne.add_argument("--quiet", action="store_true")

    rp = sub.add_parser("reproduction", help="write docs/reproduction.md: our Fashion-MNIST results next to thesis Table 2.3")
    rp.add_argument("--results-dir", default=DEFAULT_RESULTS)
    rp.add_argument("--thesis", default="docs/thesis_fmnist.toml")
    rp.add_argument("--out", default="docs/reproduction.md")
    rp.add_argument("--smoothing-results", default="results/smoothing", help="per-eps result directories of the thesis Table 4.1/4.2 experiment")
    rp.add_argument("--smoothing-thesis", default="docs/thesis_smoothing.toml")
    rp.add_argument("--smoothing-out", default="docs/smoothing.md")

    sw = sub.add_parser("sweep", help="run a sweep plan (defenses x datasets x norms x suites, sharded) locally or on Ray")
    sw.add_argument("plan", help="plan TOML (see plans/fmnist-quick.toml)")
    sw.add_argument("--dry-run", action="store_true", help="print the job table, job count and a cost estimate; run nothing")
    sw.add_argument("--merge-partial", action="store_true", help="merge the attacks whose shards are all finished into the result files of unfinished groups, the rest marked pending (the row reads as incomplete); run nothing")
    sw.add_argument("--only", default=None, metavar="ATTACKS", help="comma-separated: run only these attacks' jobs now (the plan still decides when a row is finished and merged)")
    sw.add_argument("--executor", choices=["local", "ray"], default="local")
    sw.add_argument("--address", default=None, help="Ray cluster address (auto or HOST:PORT); default: start a local Ray instance")
    sw.add_argument("--results-dir", default="results")
    sw.add_argument("--max-retries", type=_nonneg_int, default=1, help="retries of a failed job before it is reported (default 1)")
    sw.add_argument("--time-limit", type=_duration, default=None, metavar="DURATION",
                    help="start no job that is not expected to finish within this time (e.g. 2h30m; estimated from the latest finished shard of each attack); a job that does not fit is skipped and shorter ones still run; the plan's budget check runs block by block under the same limit; a rerun continues. Local executor")
    sw.add_argument("--deadline", type=_deadline, default=None, metavar="WHEN",
                    help="as --time-limit, until HH:MM today or an ISO date-time (for a chain of sweeps in one allocation); with --time-limit the earlier one counts")
    sw.add_argument("--threads", type=_threads, default=None, metavar="N|auto",
                    help="torch threads of this process (default: torch's, or OMP_NUM_THREADS); auto: this process's share of the cores, "
                         "cores // (1 + other sweep processes on this host working on --results-dir), fitted again before each job and check block, "
                         "so a process takes the cores another one leaves when it finishes. Local executor")
    sw.add_argument("--check-block", type=_positive_int, default=0, metavar="N", help=CHECK_BLOCK_HELP)
    sw.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser("calibrate", help="set a generative classifier's reject threshold on the validation split (stored in its model card)")
    c.add_argument("--defense", required=True)
    c.add_argument("--dataset", default="fmnist")
    c.add_argument("--quantile", type=float, default=0.99, help="quantile of the clean best-class loss used as threshold (default 0.99: 1%% of clean images rejected)")
    c.add_argument("--n", type=_positive_int, default=1000, help="validation images (default 1000)")
    c.add_argument("--seed", type=_nonneg_int, default=0)
    c.add_argument("--batch-size", type=_positive_int, default=100)
    c.add_argument("--draws", type=_positive_int, default=5, help="randomized defenses: mean score of this many inferences, as bench run verifies (default 5)")
    c.add_argument("--device", default="auto")
    c.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="a defense option, e.g. precision=bf16")
    c.add_argument("--test-n", type=_nonneg_int, default=0, metavar="N", help="then score the first N test images as bench run does (threshold applied) and record test_clean_accuracy in the card")
    c.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: all cores)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    ex = sub.add_parser("export", help="export results to another benchmark's format: robustbench (leaderboard entries + bench sidecars)")
    ex.add_argument("format", choices=["robustbench"])
    ex.add_argument("--dataset", default="fmnist")
    ex.add_argument("--norm", choices=["linf", "l2"], required=True)
    ex.add_argument("--results-dir", default=DEFAULT_RESULTS)
    ex.add_argument("--out", default="exports/robustbench", help="writes <out>/<dataset>/<Linf|L2>/<Model>.json and <Model>.bench.json (default: exports/robustbench)")
    ex.add_argument("--thesis", default=None, help="thesis table for the 'reported' field (default: docs/thesis_<dataset>.toml when it exists)")

    sy = sub.add_parser("synthesize", help="image synthesis with a classifier's gradient (generate, inpaint, superres, translate) and docs/synthesis.md")
    sy.add_argument("--defense", default=None, help="comma-separated defenses that declare a gradient (e.g. cnn,adv-l2)")
    sy.add_argument("--dataset", default="fmnist")
    sy.add_argument("--task", choices=["generate", "inpaint", "superres", "translate", "all"], default=None)
    sy.add_argument("--judge", action="append", default=None, metavar="NAME[@CHECKPOINT][,KEY=VALUE...]",
                    help="independent classifier scoring generate/translate images (repeatable; default: cnn@checkpoints/judges/cnn-fmnist.safetensors when it exists)")
    sy.add_argument("--seeds-per-class", type=_positive_int, default=5, help="generate: seeds per class and seed distribution (default 5)")
    sy.add_argument("--seed-dists", default="uniform,univariate,multivariate", help="generate: seed distributions (default all three)")
    sy.add_argument("--n", type=_positive_int, default=20, help="inpaint / superres: test images (default 20)")
    sy.add_argument("--per-pair", type=_positive_int, default=10, help="translate: images per class pair (default 10)")
    sy.add_argument("--max-steps", type=_positive_int, default=None, help="cap the paper's step counts (alpha raised to keep alpha x steps); for expensive defenses")
    sy.add_argument("--eot", type=_positive_int, default=5, help="EOT draws per gradient for randomized defenses (default 5)")
    sy.add_argument("--seed", type=_nonneg_int, default=0)
    sy.add_argument("--batch-size", type=_positive_int, default=100)
    sy.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="a defense option, e.g. steps=10 for eabs")
    sy.add_argument("--results-dir", default=DEFAULT_RESULTS, help="writes <results-dir>/<dataset>/synthesis/<defense>.json and PNG grids")
    sy.add_argument("--report", action="store_true", help="(re)write the report from the result files (after synthesising, if --defense is given)")
    sy.add_argument("--out", default="docs/synthesis.md", help="report path (default docs/synthesis.md)")
    sy.add_argument("--device", default="auto")
    sy.add_argument("--quiet", action="store_true")

    de = sub.add_parser("decompose", help="Yao et al. section 4.1: c-VAE on novel sign combinations (ts) or overlapping items (multi-fmnist); writes docs/decomposition.md")
    de.add_argument("--experiment", required=True, choices=["novel", "overlap"])
    de.add_argument("--dataset", required=True, help="ts (novel) or multi-fmnist / multimnist (overlap)")
    de.add_argument("--n", type=_positive_int, default=None, help="test images (default: all of the test type / test split)")
    de.add_argument("--epochs", type=_positive_int, default=None, help="c-VAE training epochs when no checkpoint exists (default: novel 10, overlap 4)")
    de.add_argument("--select-n", type=_positive_int, default=100, help="validation images for the hyperparameter choice (default 100)")
    de.add_argument("--seed", type=_nonneg_int, default=0)
    de.add_argument("--retrain", action="store_true", help="train the c-VAE again even if checkpoints/cvae-<dataset>-<experiment> exists")
    de.add_argument("--reselect", action="store_true", help="keep the trained c-VAE and choose its inference hyperparameters on the validation split again")
    de.add_argument("--checkpoint-dir", default="checkpoints")
    de.add_argument("--results-dir", default=DEFAULT_RESULTS)
    de.add_argument("--doc", default="docs/decomposition.md")
    de.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: all cores)")
    de.add_argument("--quiet", action="store_true")

    ls = sub.add_parser("list", help="list defenses, attacks, datasets or suites")
    ls.add_argument("what", choices=["defenses", "attacks", "datasets", "suites"])
    return p


def _cmd_run(a) -> int:
    from harness.engine.runner import RunConfig, evaluate

    attacks = tuple(s.strip() for s in a.attacks.split(",") if s.strip()) if a.attacks else None
    cfg = RunConfig(
        defense=a.defense, dataset=a.dataset, norm=a.norm, suite=a.suite, n=a.n, seed=a.seed, device=a.device,
        results_dir=a.results_dir, fresh=a.fresh, batch_size=a.batch_size, eps=a.eps, attacks=attacks,
        progress=not a.quiet, train_if_missing=not a.no_train, arch=a.arch, defense_options=tuple(a.option),
        check_budget=a.check_budget, check_block=a.check_block,
    )
    if a.check_block and not a.check_budget:
        raise BenchUserError("--check-block sets the block size of the budget check: give --check-budget too")
    path = evaluate(cfg)
    # imported only now: pandas / statsmodels / scipy cost seconds that a refused run should not wait for
    from harness.report.tables import format_report

    print(f"wrote {path}")
    print()
    print(format_report(a.results_dir, a.dataset, a.norm))
    return 0


def _cmd_sweep(a) -> int:
    from harness.orchestration.sweep import check_estimate, check_only, expand, format_job_table, load_plan, merge_partial, run_sweep

    plan = load_plan(a.plan)
    only = tuple(x.strip() for x in a.only.split(",") if x.strip()) if a.only is not None else None
    if only is not None and not only:
        raise BenchUserError("--only needs at least one attack name")
    if a.dry_run:
        jobs = expand(plan)
        if only is not None:
            check_only(jobs, only)
            jobs = [j for j in jobs if j.attack.split("@")[0] in only]
        print(format_job_table(jobs, a.results_dir))
        check = check_estimate(plan, jobs, a.results_dir)
        if check:
            print(f"\n{check}")
        return 0
    if a.merge_partial:
        merge_partial(plan, results_dir=a.results_dir)
        return 0
    ends = [t for t in (a.deadline, None if a.time_limit is None else time.time() + a.time_limit) if t is not None]
    return run_sweep(plan, results_dir=a.results_dir, executor=a.executor, address=a.address, max_retries=a.max_retries, progress=not a.quiet, only=only,
                     deadline=min(ends) if ends else None, threads=a.threads, check_block=a.check_block)


def _cmd_train(a) -> int:
    import torch

    from harness.engine.models import train_defense
    from harness.store.provenance import resolve_device

    if a.threads is not None:
        torch.set_num_threads(a.threads)
    overrides = _config_overrides(a.config_set)
    train_defense(a.defense, a.dataset, device=resolve_device(a.device), epochs=a.epochs, out_dir=a.out, seed=a.seed, progress=not a.quiet, options={"arch": a.arch}, resume=a.resume, config_overrides=overrides)
    return 0


def _config_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` strings to a dict; values are read as JSON (numbers, booleans) where they parse, else kept as text."""
    import json

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchUserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _cmd_plot(a) -> int:
    from harness.report.plots import eps_sweep_curve, sweep_plot_path
    from harness.store.results import load_results
    from harness.report.tables import norm_label

    results = load_results(a.results_dir, a.dataset, a.norm)
    if not results:
        raise BenchUserError(f"no results for {a.dataset}/{a.norm} in {a.results_dir}; run `bench run --suite fgm-sweep --results-dir {a.results_dir} ...` first")
    out = a.out or sweep_plot_path(a.results_dir, a.dataset, a.norm)
    try:
        eps_sweep_curve(results, out, title=f"{a.dataset} {norm_label(a.norm)}")
    except ValueError as exc:
        raise BenchUserError(f"{a.results_dir}/{a.dataset}/{a.norm}: {exc}") from None
    print(f"wrote {out}")
    return 0


def _cmd_table(a) -> int:
    from harness.report.tables import format_report

    print(format_report(a.results_dir, a.dataset, a.norm))
    return 0


def _need_results_dir(path) -> None:
    """A results directory that does not exist is a typo or the wrong working directory: say so
    rather than write a report of no results."""
    if not os.path.isdir(path):
        raise BenchUserError(f"results directory {path} not found; run from the repository root or pass --results-dir")


def _cmd_leaderboard(a) -> int:
    from harness.report.leaderboard import check_leaderboard, write_leaderboard

    _need_results_dir(a.results_dir)
    if a.check:
        if check_leaderboard(a.results_dir, a.out):
            print(f"{a.out} is up to date")
            return 0
        print(f"{a.out} is stale: run `bench leaderboard` to regenerate it from {a.results_dir}/", file=sys.stderr)
        return 1
    changed = write_leaderboard(a.results_dir, a.out, plots=not a.no_plots)
    print(f"{'wrote' if changed else 'unchanged'} {a.out}")
    return 0


def _cmd_export(a) -> int:
    from harness.report.robustbench_export import export_robustbench, format_summary

    thesis = a.thesis
    if thesis is None and os.path.isfile(f"docs/thesis_{a.dataset}.toml"):
        thesis = f"docs/thesis_{a.dataset}.toml"
    elif thesis is not None and not os.path.isfile(thesis):
        raise BenchUserError(f"thesis table {thesis} not found")
    written, skipped = export_robustbench(a.results_dir, a.dataset, a.norm, a.out, thesis=thesis)
    print(format_summary(written, skipped))
    if not written:
        raise BenchUserError(f"no result file of {a.dataset}/{a.norm} in {a.results_dir} has an AutoAttack row; nothing exported")
    return 0


def _cmd_list(a) -> int:
    if a.what == "defenses":
        from defenses.registry import broken_plugins, list_defenses, origin_of

        for name, cls in list_defenses().items():
            flags = "randomized" if cls.randomized else "deterministic"
            print(f"{name:<16} {flags:<13} {origin_of(name):<12} {cls.gradient_policy}")
        for name, err in sorted(broken_plugins().items()):
            print(f"{name:<16} BROKEN        plugin       {err}")
        from defenses.registry import list_families

        for prefix, description in list_families().items():
            print(f"{prefix + ':<Name>':<16} {'family':<13} {'built-in':<12} {description}")
    elif a.what == "attacks":
        from harness.attacks import broken_plugins, list_attacks, origin_of

        for name, info in list_attacks().items():
            origin = "built-in" if origin_of(name) == "built-in" else "plugin"
            print(f"{name:<11} {','.join(info.norms):<8} {info.kind:<12} {info.uses:<13} {info.library:<13} {origin:<9} {info.description}")
        for name, err in sorted(broken_plugins().items()):
            print(f"{name:<11} BROKEN   plugin: {err}")
    elif a.what == "datasets":
        from harness import datasets

        for d in datasets.list_datasets():
            where = datasets.find_data_dir(d.name)
            if d.generated_from == "seed":
                where = "generated from a seed"
            elif d.generated_from is not None:
                where = f"generated from {d.generated_from} ({where})" if where else f"generated from {d.generated_from} (not on disk)"
            kind = "components" if d.multilabel else "classes"
            print(f"{d.name:<15} {d.num_classes:>3} {kind:<10}  {'x'.join(map(str, d.shape)):<8} {str(where) if where else 'not on disk'}")
    else:
        from threat_models import list_suites, load_suite

        names = list_suites()
        width = max(map(len, names), default=0)
        for s in names:
            print(f"{s:<{width}}  {load_suite(s, norm='linf', dataset='fmnist').description}")
    return 0


def _cmd_neat(a) -> int:
    from harness.experiments.fooling import run_neat

    if a.threshold is not None and not 0 < a.threshold < 1:
        raise BenchUserError(f"--threshold must be in (0, 1), got {a.threshold}")
    names = [d.strip() for d in a.defenses.split(",") if d.strip()]
    res = run_neat(source=a.source, dataset=a.dataset, defenses=names, out_dir=a.out, seed=a.seed, device=a.device,
                   population=a.population, generations=a.generations, threshold=a.threshold, runs_per_target=a.runs_per_target, progress=not a.quiet)
    print(res["table"])
    for kind, path in res["paths"].items():
        print(f"wrote {path}")
    return 0


def _cmd_decompose(a) -> int:
    from harness.experiments.decompose import run_decompose

    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    run_decompose(a.experiment, a.dataset, n=a.n, epochs=a.epochs, seed=a.seed, select_n=a.select_n, results_dir=a.results_dir, doc=a.doc,
                  checkpoint_dir=a.checkpoint_dir, retrain=a.retrain, reselect=a.reselect, progress=not a.quiet)
    return 0


def _cmd_calibrate(a) -> int:
    from harness.engine.calibrate import calibrate

    if a.threads is not None:
        import torch

        torch.set_num_threads(a.threads)
    out = calibrate(a.defense, a.dataset, quantile=a.quantile, n=a.n, seed=a.seed, batch_size=a.batch_size, draws=a.draws, device=a.device, options=dict(a.option), progress=not a.quiet, test_n=a.test_n)
    cal = out["reject_calibration"]
    print(f"{a.defense} on {a.dataset}: reject threshold {out['reject_threshold']:.4f} (quantile {cal['quantile']} of the best class loss on {cal['n']} validation images); "
          f"full-inference val accuracy {cal['val_acc_inference']:.3f} ({cal['draws']} draw(s) averaged); {cal['wall_time_s']} s")
    if "test_clean_accuracy" in out:
        t = out["test_clean_accuracy"]
        print(f"clean accuracy on {t['images']}: {t['acc']:.3f} ({t['abstained']:.1%} abstained; {t['draws']} draw(s) averaged); {t['wall_time_s']} s")
    print(f"wrote {out['card']}")
    return 0


def _cmd_reproduction(a) -> int:
    from harness.report.reproduction import write_reproduction

    if not os.path.isfile(a.thesis):
        raise BenchUserError(f"thesis table {a.thesis} not found; run from the repository root or pass --thesis")
    _need_results_dir(a.results_dir)
    changed = write_reproduction(a.results_dir, a.thesis, a.out)
    print(f"{'wrote' if changed else 'unchanged'} {a.out}")
    if os.path.isdir(a.smoothing_results):
        from harness.report.smoothing_report import write_smoothing

        if not os.path.isfile(a.smoothing_thesis):
            raise BenchUserError(f"thesis table {a.smoothing_thesis} not found; run from the repository root or pass --smoothing-thesis")
        changed = write_smoothing(a.smoothing_results, a.smoothing_thesis, a.smoothing_out)
        print(f"{'wrote' if changed else 'unchanged'} {a.smoothing_out}")
    return 0


def _cmd_synthesize(a) -> int:
    from harness.experiments.synthesis import TASKS, SynthesisConfig, default_judges, run_synthesis

    if not a.defense and not a.report:
        raise BenchUserError("bench synthesize needs --defense and --task (or --report to rewrite the report from existing results)")
    if a.defense:
        if a.task is None:
            raise BenchUserError(f"--task is required with --defense: one of {', '.join(TASKS)} or all")
        names = [d.strip() for d in a.defense.split(",") if d.strip()]
        judges = tuple(a.judge) if a.judge is not None else default_judges(a.dataset)
        tasks = TASKS if a.task == "all" else (a.task,)
        dists = tuple(d.strip() for d in a.seed_dists.split(",") if d.strip())
        for name in names:
            for task in tasks:
                cfg = SynthesisConfig(defense=name, dataset=a.dataset, task=task, seed=a.seed, seeds_per_class=a.seeds_per_class, seed_kinds=dists,
                                      n=a.n, per_pair=a.per_pair, eot=a.eot, max_steps=a.max_steps, batch_size=a.batch_size, judges=judges,
                                      options=tuple(a.option), results_dir=a.results_dir, device=a.device, progress=not a.quiet)
                res = run_synthesis(cfg)
                print(f"{name} {task}: {res['entry']['budget']}; {res['entry']['wall_time_s']} s")
                print(f"wrote {res['paths']['results']} and {res['paths']['png']}")
    if a.report:
        from harness.report.synthesis_report import write_synthesis_report

        changed = write_synthesis_report(a.results_dir, a.dataset, a.out)
        print(f"{'wrote' if changed else 'unchanged'} {a.out}")
    return 0


COMMANDS = {"decompose": _cmd_decompose, "export": _cmd_export, "calibrate": _cmd_calibrate, "neat": _cmd_neat, "reproduction": _cmd_reproduction, "run": _cmd_run, "sweep": _cmd_sweep, "synthesize": _cmd_synthesize, "train": _cmd_train, "table": _cmd_table, "plot": _cmd_plot, "leaderboard": _cmd_leaderboard, "list": _cmd_list}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bench`` console script."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BenchUserError as exc:
        msg = " ".join(str(exc).split())
        print(f"bench: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` etc.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("bench: interrupted; finished work is saved and a rerun resumes it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
