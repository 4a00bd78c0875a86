"""adv-linf / adv-l2: PGD adversarial fine-tuning of the trained CNN with the harness's foolbox PGD."""

import json

import pytest
import torch

import harness.attacks
from harness.store import checkpoints
from harness.errors import BenchUserError
from harness.engine.models import build_defense, load_defense, train_defense

CPU = torch.device("cpu")


def _quiet(*_):
    pass


@pytest.fixture
def no_shipped(bench_env, monkeypatch):
    """Hide the shipped checkpoints so only the test's own are found."""
    monkeypatch.setattr(checkpoints, "shipped_dir", lambda: bench_env / "no-shipped")
    return bench_env


def test_recipe_follows_thesis():
    for name, norm, eps in (("adv-linf", "linf", 0.1), ("adv-l2", "l2", 1.5)):
        d = build_defense(name, "fmnist")
        cfg = d.default_train_config("fmnist")
        assert (cfg["optimizer"], cfg["lr"], cfg["lr_halve_every"], cfg["batch_size"]) == ("adam", 1e-4, 0, 512)
        assert (cfg["norm"], cfg["eps"], cfg["pgd_steps"], cfg["pgd_rel_stepsize"]) == (norm, eps, 10, 0.25)
        assert cfg["init"] == "cnn" and cfg["noise_sigma"] == 0.0
        assert d.checkpoint_name() == name and type(d.net).__name__ == "CNNNet"


def test_needs_the_trained_cnn(no_shipped):
    with pytest.raises(BenchUserError, match="bench train --defense cnn --dataset fmnist"):
        train_defense("adv-linf", "fmnist", device=CPU, progress=False, announce=_quiet, config_overrides={"epochs": 1, "pgd_steps": 1})


def test_adv_linf_smoke(no_shipped, monkeypatch):
    ckpt = no_shipped / "ckpt"
    cnn_path = train_defense("cnn", "fmnist", device=CPU, epochs=2, out_dir=ckpt, progress=False, announce=_quiet)
    calls = []
    real = harness.attacks.run_attack

    def spy(model, x, y, threat, spec, *, seed):
        calls.append((model.training, threat.norm, threat.eps, spec.name, spec.kwargs["steps"]))
        return real(model, x, y, threat, spec, seed=seed)

    monkeypatch.setattr(harness.attacks, "run_attack", spy)
    path = train_defense("adv-linf", "fmnist", device=CPU, out_dir=ckpt, progress=False, announce=_quiet,
                         config_overrides={"epochs": 1, "pgd_steps": 2, "val_pgd_samples": 32})
    assert path.name == "adv-linf-fmnist.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["config"]["pgd_steps"] == 2 and card["config"]["lr"] == 1e-4 and card["epochs"] == 1
    (entry,) = card["history"]
    assert 0 <= entry["val_acc"] <= 1 and 0 <= entry["val_pgd_acc"] <= 1
    assert card["val_pgd_acc"] == entry["val_pgd_acc"]
    assert card["init_checkpoint"]["sha256"] == json.loads(cnn_path.with_suffix(".json").read_text())["sha256"]
    # PGD came from the harness adapter, on the model in eval mode, at the data set's eps
    assert calls and all(c == (False, "linf", 0.1, "pgd", 2) for c in calls)

    adv, _ = load_defense("adv-linf", "fmnist", device=CPU, train_if_missing=False)
    cnn, _ = load_defense("cnn", "fmnist", device=CPU, train_if_missing=False)
    assert any(not torch.equal(a, b) for a, b in zip(adv.state_dict().values(), cnn.state_dict().values()))
    x = torch.rand(2, 1, 28, 28)
    assert adv.predict(x).shape == (2, 10)


def test_fit_takes_pgd_and_checkpoints_from_the_harness():
    """defenses/ does not import the harness: adversarial training gets its PGD and the CNN checkpoint
    through the declared TrainingServices, and says so when called without them."""
    d = build_defense("adv-linf", "fmnist")
    with pytest.raises(RuntimeError, match="use_training_services"):
        d.fit(None, None, config=d.default_train_config("fmnist"), device=CPU, generator=torch.Generator())
    with pytest.raises(BenchUserError, match="from scratch in every run"):  # --resume is refused: init_checkpoint_name() is declared
        train_defense("adv-linf", "fmnist", device=CPU, progress=False, announce=_quiet, resume=True)
