"""The ResNet-18 option of the CNN family (--arch resnet18) and the training-loop extensions it uses."""

import json

import pytest
import torch

from defenses.resnet import ResNet18, ResNet50
from defenses.training import augment_batch, make_optimizer, make_scheduler
from harness.store import checkpoints
from harness.cli import main
from harness.errors import BenchUserError
from harness.engine.models import build_defense, load_defense
from tests.datasets.fixtures import write_cifar

CPU = torch.device("cpu")


def test_forward_backward_shapes():
    net = ResNet18((3, 32, 32), 10)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962  # the standard CIFAR ResNet-18
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = net(x)
    assert out.shape == (2, 10)
    out[:, 3].sum().backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_resnet50_forward_backward_and_arch():
    net = ResNet50((3, 32, 32), 10)
    assert sum(p.numel() for p in net.parameters()) == 23_520_842  # the standard CIFAR ResNet-50 (Bottleneck [3, 4, 6, 3])
    assert [len(s) for s in net.stages] == [3, 4, 6, 3] and net.head.in_features == 2048
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    net(x)[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    d = build_defense("cnn", "cifar10", arch="resnet50")
    assert isinstance(d.net, ResNet50) and d.checkpoint_name() == "cnn-resnet50"
    assert d.default_train_config("cifar10")["arch"] == "resnet50"
    with pytest.raises(BenchUserError, match="--arch resnet50 is for the 32x32 RGB"):
        build_defense("cnn", "fmnist", arch="resnet50")


def test_arch_option():
    d = build_defense("cnn", "cifar10", arch="resnet18")
    assert isinstance(d.net, ResNet18) and d.checkpoint_name() == "cnn-resnet18" and d.info().extra == {"arch": "resnet18"}
    cfg = d.default_train_config("cifar10")
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["weight_decay"], cfg["lr_schedule"], cfg["batch_size"]) == ("sgd", 0.1, 0.9, 5e-4, "cosine", 128)
    assert build_defense("cnn", "cifar10").checkpoint_name() == "cnn"
    assert build_defense("adv-linf", "svhn", arch="resnet18").init_checkpoint_name() == "cnn-resnet18"
    assert build_defense("cnn-gauss", "gtsrb", arch="resnet18").default_train_config("gtsrb")["noise_sigma"] == 0.05
    with pytest.raises(BenchUserError, match="32x32 RGB"):
        build_defense("cnn", "fmnist", arch="resnet18")
    with pytest.raises(BenchUserError, match="unknown --arch"):
        build_defense("cnn", "cifar10", arch="vgg")
    with pytest.raises(BenchUserError, match="does not take option.s. arch"):
        build_defense("abs", "cifar10", arch="resnet18")


def test_training_loop_extensions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    a = augment_batch(x, mode="crop-flip", padding=2, generator=torch.Generator().manual_seed(1))
    b = augment_batch(x, mode="crop-flip", padding=2, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment_batch(x, mode="crop", padding=0, generator=g), x)
    with pytest.raises(ValueError, match="augment"):
        augment_batch(x, mode="mixup", padding=2, generator=g)
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = make_optimizer(p, {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4})
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    sched = make_scheduler(opt, {"lr_schedule": "cosine"}, epochs=4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(p, {"optimizer": "lbfgs", "lr": 1})


def test_train_one_epoch_on_cifar_fixture(bench_env, monkeypatch):
    monkeypatch.setattr(checkpoints, "shipped_dir", lambda: bench_env / "no-shipped")
    write_cifar(bench_env / "data" / "cifar10", n_per_batch=8, n_test=10)
    out = bench_env / "ckpt"
    rc = main(["train", "--defense", "cnn", "--dataset", "cifar10", "--arch", "resnet18", "--epochs", "1", "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0
    path = out / "cnn-resnet18-cifar10.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["options"] == {"arch": "resnet18"} and card["defense_config"] == {"arch": "resnet18"}
    assert card["config"]["optimizer"] == "sgd" and card["epochs"] == 1 and len(card["history"]) == 1
    model, _ = load_defense("cnn", "cifar10", device=CPU, train_if_missing=False, options={"arch": "resnet18"})
    assert isinstance(model.net, ResNet18) and model.predict(torch.rand(3, 3, 32, 32)).shape == (3, 10)
    with pytest.raises(BenchUserError, match="no checkpoint for cnn on cifar10"):  # the default arch has its own checkpoint
        load_defense("cnn", "cifar10", device=CPU, train_if_missing=False)


def test_run_rejects_resnet18_on_28x28(bench_env, capsys):
    rc = main(["run", "--defense", "cnn", "--dataset", "fmnist", "--norm", "linf", "--arch", "resnet18", "--no-train", "--quiet", "--results-dir", str(bench_env / "r")])
    assert rc == 2 and "32x32 RGB" in capsys.readouterr().err
