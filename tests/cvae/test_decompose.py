"""`bench decompose`: user errors and the document rendered from result files."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.experiments.decompose import _rate, write_doc


@pytest.mark.parametrize("args, msg", [
    (["--experiment", "novel", "--dataset", "multi-fmnist"], "runs on ts"),
    (["--experiment", "overlap", "--dataset", "ts"], "multi-fmnist or multimnist"),
    (["--experiment", "bogus", "--dataset", "ts"], "invalid choice"),
])
def test_user_errors_exit_2(args, msg, capsys):
    assert main(["decompose", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error:") and msg in err[0]


def _result(experiment):
    ck = {"path": "checkpoints/x", "sha256": "ab", "epochs": 2, "train_wall_time_s": 1.0, "selection_wall_time_s": 2.0, "val_exact": 0.5, "select_n": 10}
    inf = {"steps": 25, "refine_steps": 10, "beta": 5.0, "b": -2.5, "c": 0.1, "y_lower": 0.2, "y_upper": 0.8, "noise_threshold": 3.0}
    base = {"experiment": experiment, "command": "bench decompose ...", "device": "cpu", "threads": 1, "wall_time_s": 9.0, "code_commit": "abc"}
    if experiment == "novel":
        return dict(base, dataset="ts", train_types=["left turn"], test_type="no left turn", train_size=10, informative_components=["slash"],
                    cvae={"novel_recognised": _rate(19, 20), "novel_recognised_informative": _rate(20, 20), "seen_exact_informative": _rate(10, 10), "novel_rejected_as_noise": _rate(0, 20), "novel_decompositions": {"[1, 1, 1, 0]": 19},
                          "seen_exact": _rate(9, 10), "mean_candidates": 1.5, "inference": inf, "checkpoint": ck},
                    cnn={"novel_called_left_turn": _rate(20, 20), "novel_calls": {"left turn": 20}, "seen_accuracy": _rate(10, 10), "epochs": 3,
                         "train_wall_time_s": 1.0, "arch": "cnn"},
                    figures={"labels": "a.png", "decompositions": "b.png"})
    return dict(base, dataset="multi-fmnist", train_size=10,
                cvae={"exact_set_accuracy": _rate(6, 10), "both_true_components_found": _rate(7, 10), "rejected_as_noise": _rate(0, 10),
                      "predicted_ones": {"2": 10}, "mean_candidates": 2.0, "inference": inf, "checkpoint": ck, "wall_time_s": 3.0},
                cnn={"exact_set_accuracy": _rate(8, 10), "epochs": 5, "train_wall_time_s": 2.0, "arch": "overlay cnn"},
                figures={"samples": "c.png"})


def test_doc_is_rendered_from_the_result_files(tmp_path):
    folder = tmp_path / "results" / "decomposition"
    folder.mkdir(parents=True)
    for e, d in (("novel", "ts"), ("overlap", "multi-fmnist")):
        (folder / f"{e}-{d}.json").write_text(json.dumps(_result(e)))
    doc = tmp_path / "docs" / "decomposition.md"
    text = write_doc(str(tmp_path / "results"), str(doc))
    assert doc.read_text() == text
    assert "recognised 95.0% [" in text and "(19/20)" in text
    assert "called 'left turn' 100.0% [" in text
    assert "| c-VAE | 60.0% [" in text and "65.6%" in text
    assert "top 2 classes (a reference for how separable they are) | 80.0% [" in text and "CNN: overlay cnn, 5 epochs" in text
    assert "bench decompose ..." in text and "2 epochs of eq. (1)" in text
    assert write_doc(str(tmp_path / "results"), str(doc)) == text  # a pure function of the files


def test_empty_doc(tmp_path):
    text = write_doc(str(tmp_path / "none"), str(tmp_path / "d.md"))
    assert "No results yet" in text


def test_validation_shuffle_keeps_images_with_their_labels():
    import torch

    from harness.experiments.decompose import _shuffled

    x = torch.arange(50.0).view(50, 1, 1, 1).expand(50, 1, 2, 2)
    y = torch.stack([torch.arange(50) % 2, torch.arange(50)], 1)  # the second column names the image
    split = type("Split", (), {"x": x, "y": y})()
    out = _shuffled(split, torch.Generator().manual_seed(0))
    assert not torch.equal(out.y, y)  # shuffled
    assert torch.equal(out.x[:, 0, 0, 0].long(), out.y[:, 1])  # but every image keeps its label
    again = _shuffled(split, torch.Generator().manual_seed(0))
    assert torch.equal(again.x, out.x) and torch.equal(again.y, out.y)  # seeded


def test_reselect_keeps_the_weights_and_rewrites_only_the_cards_choice(tmp_path, monkeypatch):
    import torch

    from defenses.cvae import CVAE
    from harness.experiments import decompose
    from harness.store.checkpoints import save_checkpoint

    monkeypatch.setattr(decompose.datasets, "get_info", lambda name: type("Info", (), {"num_classes": 4, "shape": (1, 64, 64), "multilabel": True})())
    torch.manual_seed(0)
    model = CVAE(num_classes=4, input_shape=(1, 64, 64), dataset="ts", multilabel=True)
    path = tmp_path / "cvae-ts-novel.safetensors"
    card = save_checkpoint(model, path, {"defense": "cvae", "epochs": 3, "train_wall_time_s": 5.0, "inference": {"c": 1.0}, "val_exact": 0.1, "command": "bench decompose old"})
    weights = path.read_bytes()
    seen = {}

    def fake_select(self, x, y, *, progress=False, components=None):
        seen["pairs"] = (x.clone(), y.clone(), components.clone())
        return {"inference": {"c": 0.1, "beta": 5.0}, "val_exact": 0.9, "selection": {"n": len(x), "grid": []}}

    monkeypatch.setattr(CVAE, "select_decomposition", fake_select)
    split = type("Split", (), {"x": torch.rand(6, 1, 64, 64), "y": torch.tensor([[1, 0, 1, 0], [1, 1, 0, 1]] * 3)})()
    kw = dict(epochs=3, seed=0, select_n=4, retrain=False, checkpoint_dir=tmp_path, progress=False, log=lambda *_: None)

    _, loaded = decompose._cvae("ts", "novel", split, split, **kw)  # plain load: no selection
    assert "pairs" not in seen and loaded["val_exact"] == 0.1
    _, new = decompose._cvae("ts", "novel", split, split, reselect=True, **kw)
    x, y, comps = seen["pairs"]
    assert torch.equal(x, split.x[:4]) and torch.equal(y, split.y[:4])
    assert comps.tolist() == [False, True, True, True]  # the component in every training image is not scored
    assert path.read_bytes() == weights  # weights untouched
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["inference"] == {"c": 0.1, "beta": 5.0} and on_disk["val_exact"] == 0.9 and on_disk["sha256"] == card["sha256"]
    assert on_disk["command"] == "bench decompose old" and "reselected_by" in on_disk and new["val_exact"] == 0.9


def test_multilabel_cnn_reference_learns_two_hot_targets():
    import torch

    from harness.experiments.decompose import _train_cnn

    g = torch.Generator().manual_seed(0)
    # 36 x 36 overlays of two of four bright quadrant-like blocks: a separable toy multi-label task
    y = torch.zeros(256, 4, dtype=torch.long)
    for i in range(256):
        y[i, torch.randperm(4, generator=g)[:2]] = 1
    x = torch.rand(256, 1, 36, 36, generator=g) * 0.1
    for k, (r, c) in enumerate([(0, 0), (0, 18), (18, 0), (18, 18)]):
        x[y[:, k] == 1, :, r : r + 18, c : c + 18] += 0.8
    net, _ = _train_cnn(x, y, epochs=8, seed=0, progress=False)
    with torch.no_grad():
        top2 = torch.zeros_like(y).scatter(1, net(x).topk(2, dim=1).indices, 1)
    assert (top2 == y).all(1).float().mean() > 0.9
