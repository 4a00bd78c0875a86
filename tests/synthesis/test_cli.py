"""`bench synthesize` end to end on the tiny learnable Fashion-MNIST fixture, and its user errors."""

import json
import os
from pathlib import Path

import pytest
import torch

from harness.store import checkpoints
from harness.engine.models import train_defense
from tests.conftest import run_bench

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
ENV = {"OMP_NUM_THREADS": "1"}


def _quiet(msg):
    pass


@pytest.fixture
def tiny_models(bench_env, monkeypatch):
    """A 1-epoch CNN (seed 0) where `bench` looks for it and a judge CNN (seed 1) in its own folder."""
    monkeypatch.setattr(checkpoints, "shipped_dir", lambda: bench_env / "no-shipped")
    train_defense("cnn", "fmnist", device=CPU, epochs=1, progress=False, announce=_quiet)
    judge = train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=1, out_dir=bench_env / "judges", progress=False, announce=_quiet)
    return bench_env, judge


def test_synthesize_all_tasks_and_report(tiny_models):
    env, judge = tiny_models
    out, doc = env / "r", env / "docs" / "synthesis.md"
    r = run_bench("synthesize", "--defense", "cnn", "--task", "all", "--seeds-per-class", "1", "--n", "3", "--per-pair", "2", "--max-steps", "3",
                  "--judge", f"cnn@{judge}", "--results-dir", str(out), "--report", "--out", str(doc), "--quiet", "--device", "cpu", env_extra=ENV)
    assert r.returncode == 0, r.stderr
    d = out / "fmnist" / "synthesis"
    data = json.loads((d / "cnn.json").read_text())
    assert list(data["tasks"]) == ["generate", "inpaint", "superres", "translate"]
    for task, e in data["tasks"].items():
        assert (d / e["grid"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert e["command"].startswith("bench synthesize") and e["budget"] and e["wall_time_s"] >= 0
    gen = data["tasks"]["generate"]
    assert gen["summary"]["all"]["n"] == 30 and len(gen["images"]) == 30
    assert all(len(c) == 4 for c in gen["loss_curve"].values())  # 3 steps + the seed
    label = "cnn seed 1"
    assert gen["judges"][label]["train_seed"] == 1 and not gen["judges"][label]["same_as_synthesiser"]
    assert gen["summary"]["all"]["judge"][label]["final_target"] <= 30
    inp = data["tasks"]["inpaint"]["summary"]
    assert inp["n"] == 3 and inp["max_change_outside"] == 0.0
    assert data["tasks"]["superres"]["summary"]["n"] == 3
    assert data["tasks"]["translate"]["summary"]["all"]["n"] == 10
    text = doc.read_text()
    for heading in ("## Generation", "## Inpainting", "## Super-resolution", "## Translation", "## The paper's claim"):
        assert heading in text
    assert "cnn-generate.png" in text and (d / "generate-loss.png").is_file()
    # more seeds per class: the first seed of every class is the same image (paired across runs),
    # with identical per-image figures (deterministic model)
    r2 = run_bench("synthesize", "--defense", "cnn", "--task", "generate", "--seeds-per-class", "2", "--max-steps", "3",
                   "--judge", f"cnn@{judge}", "--results-dir", str(out), "--quiet", "--device", "cpu", env_extra=ENV)
    assert r2.returncode == 0, r2.stderr
    again = json.loads((d / "cnn.json").read_text())["tasks"]["generate"]["images"]
    assert len(again) == 60 and [r for r in again if r["seed_index"] == 0] == gen["images"]
    # report only: a pure function of the result files (a second rewrite changes nothing)
    for word in ("wrote", "unchanged"):
        r3 = run_bench("synthesize", "--report", "--results-dir", str(out), "--out", str(doc), env_extra=ENV)
        assert r3.returncode == 0 and word in r3.stdout, r3.stderr


def test_judge_equal_to_the_synthesiser_is_skipped(tiny_models):
    env, _ = tiny_models
    out = env / "r"
    r = run_bench("synthesize", "--defense", "cnn", "--task", "translate", "--per-pair", "1", "--max-steps", "2", "--judge", "cnn",
                  "--results-dir", str(out), "--quiet", "--device", "cpu", env_extra=ENV)
    assert r.returncode == 0, r.stderr
    e = json.loads((out / "fmnist" / "synthesis" / "cnn.json").read_text())["tasks"]["translate"]
    assert e["skipped_judges"] == ["cnn"] and e["summary"]["all"]["judge"]["cnn"] is None


def _one_line_error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:"), r.stderr
    return lines[0]


def test_user_errors(bench_env):
    assert "invalid choice" in _one_line_error(run_bench("synthesize", "--defense", "cnn", "--task", "colorize"))
    assert "no-such-defense" in _one_line_error(run_bench("synthesize", "--defense", "no-such-defense", "--task", "generate", "--judge", "cnn", "--device", "cpu"))
    assert "--task is required" in _one_line_error(run_bench("synthesize", "--defense", "cnn"))
    assert "--report" in _one_line_error(run_bench("synthesize"))
    assert "judge checkpoint" in _one_line_error(run_bench("synthesize", "--defense", "cnn", "--task", "generate", "--judge", "cnn@/nonexistent/cnn.safetensors", "--device", "cpu"))


PLUGIN = '''
import torch
from defenses.base import Defense


class NoGrad(Defense):
    name = "nograd"
    trainable = False
    gradient_policy = "none: predict runs under torch.no_grad"

    def predict(self, x, *, generator=None):
        with torch.no_grad():
            return torch.cat([x.flatten(1)[:, :5], -x.flatten(1)[:, :5]], 1)
'''


def test_defense_without_gradient_is_a_user_error(bench_env):
    site = bench_env / "site"
    info = site / "nograd_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nograd_plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.defenses]\nnograd = nograd_plugin:NoGrad\n")
    (site / "nograd_plugin.py").write_text(PLUGIN)
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    line = _one_line_error(run_bench("synthesize", "--defense", "nograd", "--task", "generate", "--judge", "cnn", "--device", "cpu", env_extra=env))
    assert "declares no gradient" in line
