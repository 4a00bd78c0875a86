"""run_neat end to end on the tiny learnable Fashion-MNIST fixture: three files, skips, errors."""

import json

import pytest
import torch

from harness.store import checkpoints
from harness.errors import BenchUserError
from harness.experiments.fooling import load_fooling_set, run_neat
from harness.engine.models import train_defense

CPU = torch.device("cpu")


def _quiet(msg):
    pass


@pytest.fixture
def trained_cnn(bench_env, monkeypatch):
    # only the checkpoints trained here count: hide the shipped ones
    monkeypatch.setattr(checkpoints, "shipped_dir", lambda: bench_env / "no-shipped")
    train_defense("cnn", "fmnist", device=CPU, epochs=1, progress=False, announce=_quiet)
    return bench_env


def test_run_neat_writes_three_files(trained_cnn):
    messages = []
    out = trained_cnn / "out"
    res = run_neat(source="cnn", dataset="fmnist", defenses=["cnn", "abs"], out_dir=out, seed=0, device="cpu",
                   population=6, generations=2, threshold=0.3, progress=False, announce=messages.append)
    d = out / "fmnist" / "neat"
    for name in ("fooling.png", "fooling.safetensors", "results.json"):
        assert (d / name).is_file(), name
    assert (d / "fooling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((d / "results.json").read_text())
    assert data == res["results"]
    m = data["manifest"]
    assert (m["source"], m["population"], m["generations"], m["threshold"], m["seed"]) == ("cnn", 6, 2, 0.3, 0)
    assert m["neat_python"].startswith("2.")
    assert sorted(m["confidence_reached"]) == [str(t) for t in range(10)]
    assert m["n_images"] == 10 and len(data["images"]) == 10
    assert "abs" in data["skipped"] and "bench train --defense abs" in data["skipped"]["abs"]
    assert any("skipping abs" in msg for msg in messages)
    s = data["defenses"]["cnn"]
    assert s["n"] == m["n_reached"] == sum(im["reached"] for im in data["images"])
    assert s["fooled"] + s["abstained"] + s["other"] == s["n"]
    if s["n"]:
        assert s["rejection_rate"] == s["abstained"] / s["n"]
    fs = load_fooling_set(d / "fooling.safetensors")
    assert tuple(fs.images.shape) == (10, 1, 28, 28) and fs.targets.tolist() == list(range(10))
    assert fs.threshold == 0.3
    assert [round(c, 12) for c in fs.confidences.tolist()] == [round(im["confidence"], 12) for im in data["images"]]
    assert "cnn" in res["table"] and "abs" in res["table"]


def test_missing_source_checkpoint_and_unknown_names(trained_cnn):
    with pytest.raises(BenchUserError, match="bench train --defense abs"):
        run_neat(source="abs", defenses=["cnn"], out_dir=trained_cnn / "o", population=4, generations=1, progress=False, announce=_quiet)
    with pytest.raises(BenchUserError, match="no-such-defense"):
        run_neat(defenses=["no-such-defense"], out_dir=trained_cnn / "o", population=4, generations=1, progress=False, announce=_quiet)
    with pytest.raises(BenchUserError, match="threshold"):
        run_neat(defenses=["cnn"], out_dir=trained_cnn / "o", threshold=0.0, progress=False, announce=_quiet)
