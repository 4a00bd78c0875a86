"""`bench train --resume`: continue a checkpoint for more epochs; the card continues the old one."""

import json

import pytest
import torch

from harness.store.checkpoints import read_card
from harness.errors import BenchUserError
from harness.engine.models import build_defense, train_defense

CPU = torch.device("cpu")
QUIET = {"progress": False, "announce": lambda *_: None}


@pytest.fixture
def bench_env(bench_env):
    """The shared fixture data set cut to 220 training images (198 train + 22 val): these tests check
    that resumed runs equal uninterrupted ones, which needs a few batches per epoch, not learning.
    E-ABS then trains 2 batches of 100 per epoch (6 before), ABS one class-balanced batch (its
    smallest class keeps 10+ images)."""
    from harness import datasets

    from tests.conftest import write_learnable_idx

    write_learnable_idx(bench_env / "data" / "fmnist", n_train=220, n_test=50)
    if hasattr(datasets, "clear_caches"):
        datasets.clear_caches()
    return bench_env


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


# -- exact resume (ABS / E-ABS: training state written at the end of every epoch) ----------------
TINY = {"batch_size": 100}


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path)


def _assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ


def test_eabs_two_epochs_equal_one_plus_one_resumed(bench_env):
    from harness.store.checkpoints import load_train_state, train_state_path

    whole = train_defense("eabs", "fmnist", device=CPU, epochs=2, seed=3, out_dir=bench_env / "whole", config_overrides=TINY, **QUIET)
    first = train_defense("eabs", "fmnist", device=CPU, epochs=1, seed=3, out_dir=bench_env / "ckpt", config_overrides=TINY, **QUIET)
    card1 = read_card(first)
    assert card1["train_state"]["epoch"] == 1 and train_state_path(first).is_file()
    resumed = train_defense("eabs", "fmnist", device=CPU, epochs=1, seed=99, out_dir=bench_env / "ckpt", resume=True, config_overrides=TINY, **QUIET)
    _assert_bit_identical(_weights(whole), _weights(resumed))
    # optimisers (both Adams), schedule and generators continue identically too
    sw, mw = load_train_state(train_state_path(whole))
    sr, mr = load_train_state(train_state_path(resumed))
    _assert_bit_identical(sw, sr)
    assert mw["optimizers"] == mr["optimizers"] and mw["scheduler"] == mr["scheduler"]
    cw, cr = read_card(whole), read_card(resumed)
    assert cr["epochs"] == cw["epochs"] == 2 and cr["history"] == cw["history"]
    assert cr["resumed_from"]["sha256"] == card1["sha256"] and cr["resumed_from"]["epochs"] == 1
    assert cr["seed"] == 3  # the run's own seed; the resumed run's --seed does not matter


def test_training_killed_mid_epoch_resumes_from_last_finished_epoch(bench_env, monkeypatch):
    import math

    from defenses.generative import GenerativeClassifier
    from harness import datasets
    from harness.store.checkpoints import load_checkpoint

    whole = train_defense("eabs", "fmnist", device=CPU, epochs=3, seed=5, out_dir=bench_env / "whole", config_overrides=TINY, **QUIET)
    steps = math.ceil(len(datasets.load("fmnist", "train").x) / TINY["batch_size"])
    real_step, calls = GenerativeClassifier.train_step, []

    def dying_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == steps + 2:  # epoch 1, then 2 batches into epoch 2 (a run this short has no timing probe)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(GenerativeClassifier, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_defense("eabs", "fmnist", device=CPU, epochs=3, seed=5, out_dir=bench_env / "ckpt", config_overrides=TINY, **QUIET)
    monkeypatch.setattr(GenerativeClassifier, "train_step", real_step)
    path = bench_env / "ckpt" / "eabs-fmnist.safetensors"
    card = read_card(path)
    assert card["epochs"] == 1 and card["planned_epochs"] == 3 and card["train_state"]["epoch"] == 1
    load_checkpoint(build_defense("eabs", "fmnist"), path)  # the last finished epoch is a usable checkpoint
    resumed = train_defense("eabs", "fmnist", device=CPU, epochs=None, out_dir=bench_env / "ckpt", resume=True, config_overrides=TINY, **QUIET)
    _assert_bit_identical(_weights(whole), _weights(resumed))  # epochs=None finishes the planned 3
    assert read_card(resumed)["epochs"] == 3


def test_resume_without_training_state_starts_a_fresh_optimiser(bench_env):
    from harness.store.checkpoints import train_state_path

    first = train_defense("abs", "fmnist", device=CPU, epochs=1, config_overrides=TINY, out_dir=bench_env / "ckpt", **QUIET)
    train_state_path(first).unlink()  # like a checkpoint written before training states existed
    msgs = []
    path = train_defense("abs", "fmnist", device=CPU, epochs=1, resume=True, config_overrides=TINY, out_dir=bench_env / "ckpt", progress=False, announce=msgs.append)
    assert any("fresh optimiser" in m for m in msgs)
    card = read_card(path)
    assert card["epochs"] == 2 and [h["epoch"] for h in card["history"]] == [1, 2]
    # that run saved a training state; resuming it exactly keeps counting on top of the old epochs
    path = train_defense("abs", "fmnist", device=CPU, epochs=1, resume=True, config_overrides=TINY, out_dir=bench_env / "ckpt", progress=False, announce=msgs.append)
    assert any("optimiser, schedule and random state restored" in m for m in msgs)
    card = read_card(path)
    assert card["epochs"] == 3 and [h["epoch"] for h in card["history"]] == [1, 2, 3]


def test_stop_between_state_file_and_checkpoint_pair_resumes_from_the_state(bench_env, monkeypatch):
    """Stopped after epoch 2's training state was written but before its weights / card: the card
    still says epoch 1, the (newer, complete) state file wins and the run continues exactly."""
    import harness.engine.models as models

    whole = train_defense("eabs", "fmnist", device=CPU, epochs=3, seed=7, out_dir=bench_env / "whole", config_overrides=TINY, **QUIET)
    real_save, calls = models.save_checkpoint, []

    def dying_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(models, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_defense("eabs", "fmnist", device=CPU, epochs=3, seed=7, out_dir=bench_env / "ckpt", config_overrides=TINY, **QUIET)
    monkeypatch.setattr(models, "save_checkpoint", real_save)
    assert read_card(bench_env / "ckpt" / "eabs-fmnist.safetensors")["epochs"] == 1
    msgs = []
    resumed = train_defense("eabs", "fmnist", device=CPU, out_dir=bench_env / "ckpt", resume=True, config_overrides=TINY, progress=False, announce=msgs.append)
    assert any("after epoch 2" in m for m in msgs)
    _assert_bit_identical(_weights(whole), _weights(resumed))


def test_cnn_two_epochs_equal_one_plus_one_resumed(bench_env):
    """The CNN family resumes exactly too (optimiser, schedule, shuffles and noise draws)."""
    whole = train_defense("cnn", "fmnist", device=CPU, epochs=2, seed=5, out_dir=bench_env / "whole", **QUIET)
    train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=5, out_dir=bench_env / "ckpt", **QUIET)
    resumed = train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=5, out_dir=bench_env / "ckpt", resume=True, **QUIET)
    _assert_bit_identical(_weights(whole), _weights(resumed))
    assert read_card(resumed)["history"] == read_card(whole)["history"]


def test_resume_continues_the_checkpoint_in_out_dir_first(bench_env, tmp_path):
    """`bench train --resume --out DIR` continues DIR's checkpoint, also where DIR is off the search
    path and another checkpoint of the defense is on it."""
    train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=5, **QUIET)  # on the search path
    side = tmp_path / "side"
    whole = train_defense("cnn", "fmnist", device=CPU, epochs=2, seed=6, out_dir=tmp_path / "whole", **QUIET)
    train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=6, out_dir=side, **QUIET)
    msgs = []
    resumed = train_defense("cnn", "fmnist", device=CPU, epochs=1, seed=6, out_dir=side, resume=True, progress=False, announce=msgs.append)
    assert resumed == side / "cnn-fmnist.safetensors" and any(str(side) in m for m in msgs)
    _assert_bit_identical(_weights(whole), _weights(resumed))


def test_lr_factor_warmup_constant_then_cosine_tail():
    from defenses.training import lr_factor

    f = [lr_factor(e, epochs=10, warmup=2, anneal=4) for e in range(10)]
    assert f[:2] == [1 / 3, 2 / 3] and f[2:6] == [1.0] * 4
    assert all(a > b > 0 for a, b in zip(f[5:], f[6:]))  # strictly decreasing tail, last epoch still trains
    assert f[-1] < 0.1


def test_resume_may_anneal_a_constant_rate_run(bench_env):
    """A run begun at a constant rate resumes exactly (weights, random state) but with a cosine tail:
    the schedule continues at the stopped epoch, the card records the new recipe."""
    from harness.store.checkpoints import load_train_state, train_state_path

    first = read_card(train_defense("eabs", "fmnist", device=CPU, epochs=1, seed=3, out_dir=bench_env / "ckpt", config_overrides=TINY, **QUIET))
    path = train_defense("eabs", "fmnist", device=CPU, epochs=2, out_dir=bench_env / "ckpt", resume=True,
                         config_overrides={"lr_schedule": "cosine", "anneal_epochs": 2}, **QUIET)
    card = read_card(path)
    assert card["epochs"] == 3 and card["config"]["lr_schedule"] == "cosine" and card["config"]["batch_size"] == 100
    _, meta = load_train_state(train_state_path(path))
    assert meta["scheduler"]["last_epoch"] == 3
    lrs = [h["lr"] for h in card["history"]]  # the rate each epoch trained at
    assert lrs[0] == 1e-3 and 1e-3 > lrs[1] > lrs[2] > 0  # annealed after the resume, not the constant 1e-3
    assert first["sha256"] == card["resumed_from"]["sha256"]


def test_a_resume_with_a_new_schedule_trains_its_first_epoch_at_the_new_rate(bench_env):
    """A run annealed to ~0 and resumed for more epochs under a new schedule (constant, then a cosine
    tail) trains the first resumed epoch at the new schedule's rate, not the rate restored with the
    optimiser (the old schedule's last one): the rate comes from the schedule in force."""
    from defenses.training import lr_factor

    ckpt = bench_env / "ckpt"
    train_defense("eabs", "fmnist", device=CPU, epochs=2, seed=3, out_dir=ckpt, config_overrides=TINY | {"lr_schedule": "cosine", "anneal_epochs": 1}, **QUIET)
    path = train_defense("eabs", "fmnist", device=CPU, epochs=3, out_dir=ckpt, resume=True, config_overrides={"lr_schedule": "cosine", "anneal_epochs": 2}, **QUIET)
    lrs = [h["lr"] for h in read_card(path)["history"]]
    assert lrs[1] == 1e-3 * lr_factor(1, epochs=2, anneal=1) < 1e-3  # the first run's annealed last epoch
    assert lrs[2:] == [1e-3 * lr_factor(e, epochs=5, anneal=2) for e in (2, 3, 4)]
    assert lrs[2] == 1e-3  # constant part of the new schedule


def test_the_time_estimate_probes_long_runs_only(bench_env, tmp_path):
    """The 2-batch timing probe runs when the run is long enough for it to be cheap; a run of a few
    batches (where the probe would be a good part of the work) starts without it and says so."""
    from harness.engine import models

    lines, probes = [], []
    real = models._probe_seconds_per_epoch

    def probe(*a, **k):
        probes.append(1)
        return real(*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(models, "_probe_seconds_per_epoch", probe)
    try:
        train_defense("cnn", "fmnist", device=CPU, epochs=1, out_dir=tmp_path / "a", config_overrides={"batch_size": 100}, progress=False, announce=lines.append)
        assert not probes and "a short run (2 batches), not probed for an estimate" in lines[0]
        train_defense("cnn", "fmnist", device=CPU, epochs=1, out_dir=tmp_path / "b", config_overrides={"batch_size": 8}, progress=False, announce=lines.append)
        assert probes == [1] and any("; estimated " in ln and " min on " in ln for ln in lines)
    finally:
        mp.undo()
