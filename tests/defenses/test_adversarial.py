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


def test_training_at_another_eps_is_validated_at_the_evaluation_eps(no_shipped, monkeypatch):
    """`--set eps=0.05` trains against PGD at 0.05 and validates PGD at the threat model's 0.1, so
    cards of recipes at different training eps compare on the same figure."""
    ckpt = no_shipped / "ckpt"
    train_defense("cnn", "fmnist", device=CPU, epochs=1, out_dir=ckpt, progress=False, announce=_quiet)
    calls = []
    real = harness.attacks.run_attack

    def spy(model, x, y, threat, spec, *, seed):
        calls.append((len(x), threat.eps))
        return real(model, x, y, threat, spec, seed=seed)

    monkeypatch.setattr(harness.attacks, "run_attack", spy)
    path = train_defense("adv-linf", "fmnist", device=CPU, out_dir=ckpt, progress=False, announce=_quiet,
                         config_overrides={"epochs": 1, "pgd_steps": 1, "val_pgd_samples": 13, "eps": 0.05})
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["config"]["eps"] == 0.05 and card["history"][0]["val_pgd_eps"] == 0.1
    assert {e for n, e in calls if n != 13} == {0.05} and {e for n, e in calls if n == 13} == {0.1}


def test_fit_takes_pgd_and_checkpoints_from_the_harness():
    """defenses/ does not import the harness: adversarial training gets its PGD and the CNN checkpoint
    through the declared TrainingServices, and says so when called without them."""
    d = build_defense("adv-linf", "fmnist")
    with pytest.raises(RuntimeError, match="use_training_services"):
        d.fit(None, None, config=d.default_train_config("fmnist"), device=CPU, generator=torch.Generator())
    with pytest.raises(BenchUserError, match="no training state to continue exactly"):  # the shipped card has no training state
        train_defense("adv-linf", "fmnist", device=CPU, progress=False, announce=_quiet, resume=True)


def test_fine_tuning_resumes_bit_for_bit(no_shipped):
    """1 + 1 resumed epochs of adv-linf equal 2 epochs in one go; the resume does not reload the CNN
    it started from, and every card (per epoch and final) names that CNN."""
    ckpt = no_shipped / "ckpt"
    cnn_path = train_defense("cnn", "fmnist", device=CPU, epochs=1, out_dir=ckpt, progress=False, announce=_quiet)
    cnn_sha = json.loads(cnn_path.with_suffix(".json").read_text())["sha256"]
    cfg = {"pgd_steps": 1, "val_pgd_samples": 16}
    one_go = train_defense("adv-linf", "fmnist", device=CPU, epochs=2, out_dir=no_shipped / "a", progress=False, announce=_quiet, config_overrides=cfg)
    ref = {k: v.clone() for k, v in load_defense("adv-linf", "fmnist", device=CPU, train_if_missing=False, checkpoint=one_go)[0].state_dict().items()}
    # the resumed run writes to the search path (BENCH_CHECKPOINTS = ckpt) so that --resume finds it
    first = train_defense("adv-linf", "fmnist", device=CPU, epochs=1, out_dir=ckpt, progress=False, announce=_quiet, config_overrides=cfg)
    card1 = json.loads(first.with_suffix(".json").read_text())
    assert card1["epochs"] == 1 and card1["train_state"]["epoch"] == 1 and card1["init_checkpoint"]["sha256"] == cnn_sha
    notes = []
    second = train_defense("adv-linf", "fmnist", device=CPU, epochs=1, out_dir=ckpt, progress=False, announce=notes.append, resume=True)
    card2 = json.loads(second.with_suffix(".json").read_text())
    assert any("after epoch 1" in n for n in notes)
    assert card2["epochs"] == 2 and card2["init_checkpoint"]["sha256"] == cnn_sha and card2["resumed_from"]["epochs"] == 1
    got = load_defense("adv-linf", "fmnist", device=CPU, train_if_missing=False)[0].state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert [h["val_pgd_acc"] for h in card2["history"]] == [h["val_pgd_acc"] for h in json.loads(one_go.with_suffix(".json").read_text())["history"]]


def test_clean_weight_trains_on_clean_and_pgd_halves(no_shipped, monkeypatch):
    """`--set clean_weight=0.5`: each training step scores the clean batch and its PGD examples in one
    forward (Goodfellow et al. 2015 eq. 6); the default 0 scores the PGD examples alone."""
    ckpt = no_shipped / "ckpt"
    train_defense("cnn", "fmnist", device=CPU, epochs=1, out_dir=ckpt, progress=False, announce=_quiet)
    attacked, seen = [], []
    real = harness.attacks.run_attack

    def spy(model, x, y, threat, spec, *, seed):
        out = real(model, x, y, threat, spec, seed=seed)
        attacked.append(x.clone())
        return out

    monkeypatch.setattr(harness.attacks, "run_attack", spy)
    from defenses.cnn import CNNNet

    def hook(module, args):
        if module.training:
            seen.append(args[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: hook(m, a) if isinstance(m, CNNNet) else None)
    try:
        for w in (0.0, 0.5):
            attacked.clear(), seen.clear()
            path = train_defense("adv-linf", "fmnist", device=CPU, out_dir=ckpt / str(w), progress=False, announce=_quiet,
                                 config_overrides={"epochs": 1, "pgd_steps": 1, "val_pgd_samples": 0, "clean_weight": w})
            card = json.loads(path.with_suffix(".json").read_text())
            assert card["config"]["clean_weight"] == w
            assert seen and len(seen) == len(attacked)
            for x, batch in zip(attacked, seen):
                if w == 0.0:
                    assert len(batch) == len(x) and not torch.equal(batch, x)  # PGD examples only
                else:
                    assert len(batch) == 2 * len(x) and torch.equal(batch[: len(x)], x)  # clean half, then the PGD half
                    assert not torch.equal(batch[len(x):], x) and (batch[len(x):] - x).abs().max() <= 0.1 + 1e-6
    finally:
        handle.remove()


@pytest.mark.parametrize("bad", [1.0, -0.1, "half", True])
def test_clean_weight_out_of_range_is_a_user_error(no_shipped, bad):
    ckpt = no_shipped / "ckpt"
    train_defense("cnn", "fmnist", device=CPU, epochs=1, out_dir=ckpt, progress=False, announce=_quiet)
    with pytest.raises(BenchUserError, match="clean_weight must be a number in \\[0, 1\\)"):
        train_defense("adv-linf", "fmnist", device=CPU, out_dir=ckpt, progress=False, announce=_quiet,
                      config_overrides={"epochs": 1, "pgd_steps": 1, "clean_weight": bad})
