"""Eps sweeps in suites (fgm-sweep, Yao et al. Table 1): one attack key per eps, tables and the plot."""

import json

from harness.store.checkpoints import save_checkpoint
from harness.cli import main
from harness.engine.models import build_defense
from harness.report.plots import eps_sweep_curve, sweep_data
from harness.store.results import list_result_sets, load_results
from harness.engine.runner import RunConfig, evaluate
from harness.report.tables import attack_label, format_report

EPS = [0.0, 0.1, 0.2, 0.3, 0.4]
KEYS = ["fgm@0", "fgm@0.1", "fgm@0.2", "fgm@0.3", "fgm@0.4"]


def test_attack_label_of_sweep_keys():
    assert attack_label("fgm@0.2") == "FGM ε=0.2" and attack_label("pgd") == "PGD"


def test_sweep_runner_tables_and_plot(bench_env):
    save_checkpoint(build_defense("cnn", "fmnist"), bench_env / "ckpt" / "cnn-fmnist.safetensors", {"defense": "cnn"})
    res = bench_env / "results" / "sweeps"
    runs = {}
    for defense in ("cnn", "binary-cnn"):
        cfg = RunConfig(defense=defense, dataset="fmnist", norm="linf", suite="fgm-sweep", n=40, results_dir=str(res), progress=False, device="cpu", train_if_missing=False)
        runs[defense] = evaluate(cfg, log=lambda *_: None)
    data = json.loads(runs["cnn"].read_text())
    attacks = data["manifest"]["attacks"]
    assert list(attacks) == KEYS and [attacks[k]["eps"] for k in KEYS] == EPS
    assert len({attacks[k]["spec_hash"] for k in KEYS}) == len(KEYS)
    for rec in data["records"]:
        assert rec["attacks"]["fgm@0"]["correct"] == rec["clean_correct"]  # eps 0 changes nothing
        for k, e in zip(KEYS, EPS):
            n = rec["attacks"][k]["norm"]
            assert n is None or n <= e + 1e-5  # verified against that eps
    bdata = json.loads(runs["binary-cnn"].read_text())
    assert "straight-through" in bdata["manifest"]["gradient_policy"]

    # resume: nothing is recomputed
    before = runs["cnn"].read_text()
    evaluate(RunConfig(defense="cnn", dataset="fmnist", norm="linf", suite="fgm-sweep", n=40, results_dir=str(res), progress=False, device="cpu"), log=lambda *_: None)
    assert json.loads(runs["cnn"].read_text())["manifest"]["attacks"] == attacks and runs["cnn"].read_text().count("wall_time_s") == before.count("wall_time_s")

    report = format_report(res, "fmnist", "linf")
    assert "FGM ε=0.2" in report and "FGM ε=0.4" in report and "binary-cnn" in report
    results = load_results(res, "fmnist", "linf")
    table = sweep_data(results)
    assert len(table) == 10 and table.groupby("defense")["eps"].apply(list).to_dict() == {"binary-cnn": EPS, "cnn": EPS}
    out = bench_env / "sweep.png"
    eps_sweep_curve(results, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "--dataset", "fmnist", "--norm", "linf", "--results-dir", str(res)]) == 0
    assert (res / "fmnist" / "linf" / "eps_sweep.png").is_file()
    # sweep results in results/sweeps/ are one level too deep for the leaderboard's results/*/*/*.json
    assert list_result_sets(bench_env / "results") == []
