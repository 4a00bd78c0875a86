"""`bench train --resume`: continue a checkpoint for more epochs; the card continues the old one."""

import json

import pytest
import torch

from harness.checkpoints import read_card
from harness.errors import BenchUserError
from harness.models import train_defense

CPU = torch.device("cpu")
QUIET = {"progress": False, "announce": lambda *_: None}


def test_resume_continues_weights_and_card(bench_env):
    first = train_defense("cnn", "fmnist", device=CPU, epochs=1, **QUIET)
    card1 = read_card(first)
    path = train_defense("cnn", "fmnist", device=CPU, epochs=2, resume=True, **QUIET)
    card = read_card(path)
    assert path == first and card["epochs"] == 3
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3]
    assert card["history"][0] == card1["history"][0]
    assert card["resumed_from"]["sha256"] == card1["sha256"] != card["sha256"]
    assert card["wall_time_s"] >= card1["wall_time_s"]
    json.dumps(card)


def test_resume_errors(bench_env):
    with pytest.raises(BenchUserError, match="no checkpoint for d-abs"):
        train_defense("d-abs", "fmnist", device=CPU, epochs=1, resume=True, **QUIET)
    with pytest.raises(BenchUserError, match="without --resume"):
        train_defense("adv-linf", "fmnist", device=CPU, epochs=1, resume=True, **QUIET)


def test_same_seed_gives_bit_identical_weights(bench_env, tmp_path):
    """`bench train --seed S` seeds everything, weight initialisation included."""
    from safetensors.torch import load_file

    a = train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=3, out_dir=tmp_path / "a", **QUIET)
    b = train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=3, out_dir=tmp_path / "b", **QUIET)
    c = train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=4, out_dir=tmp_path / "c", **QUIET)
    wa, wb, wc = load_file(a), load_file(b), load_file(c)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=3, out_dir=tmp_path / "d", **QUIET)
    assert torch.equal(torch.rand(3), before)  # the caller's global RNG state is left alone
