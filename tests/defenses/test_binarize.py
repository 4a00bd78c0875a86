"""binary-<base>: binarization at 0.5 in front of any defense, BPDA-identity gradient, the base's checkpoint."""

import pytest
import torch

from defenses.binarize import THRESHOLD, binarize, binarized
from defenses.cnn import CNN, CNNGauss
from harness.store.checkpoints import save_checkpoint
from harness.engine.models import build_defense, load_defense

CPU = torch.device("cpu")


def _x(seed=0, n=4):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_forward_is_base_on_binarized_input():
    d = build_defense("binary-cnn", "fmnist").eval()
    x = _x()
    torch.testing.assert_close(d.predict(x), d.base.predict(binarize(x)))
    assert set(binarize(x).unique().tolist()) <= {0.0, 1.0}
    # a perturbation that crosses no threshold changes nothing
    nudged = torch.where(x > THRESHOLD, (x + 0.01).clamp(max=1), (x - 0.01).clamp(min=0))
    torch.testing.assert_close(d.predict(nudged), d.predict(x))


def test_gradient_is_base_gradient_at_binarized_input():
    d = build_defense("binary-cnn", "fmnist").eval()
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(3))
    x = _x().requires_grad_(True)
    (d.predict(x) * w).sum().backward()
    xb = binarize(x.detach()).requires_grad_(True)
    (d.base.predict(xb) * w).sum().backward()
    assert x.grad.abs().sum() > 0  # identity-passed, not the threshold's zero gradient
    torch.testing.assert_close(x.grad, xb.grad)


def test_metadata_names_straight_through_policy():
    d = build_defense("binary-cnn", "fmnist")
    info = d.info()
    assert info.name == "binary-cnn"
    assert "straight-through" in info.gradient_policy and "BPDA" in info.gradient_policy
    assert info.extra["base"] == "cnn" and info.extra["threshold"] == 0.5
    assert d.randomized is CNN.randomized and d.trainable


def test_factory_is_generic_and_reuses_the_base_checkpoint():
    cls = binarized(CNNGauss)
    assert cls.name == "binary-cnn-gauss"
    d = cls(num_classes=10, input_shape=(1, 28, 28), dataset="fmnist")
    assert d.checkpoint_name() == "cnn-gauss" and d.checkpoint_module() is d.base
    assert cls.option_names() == ("arch",)  # the base's options
    r = build_defense("binary-cnn", "cifar10", arch="resnet18")
    assert r.checkpoint_name() == "cnn-resnet18" and r.info().extra["arch"] == "resnet18"
    with pytest.raises(ValueError, match="threshold"):
        binarized(CNN, threshold=1.5)
    with pytest.raises(ValueError, match="Defense subclass"):
        binarized(torch.nn.Linear)


def test_loads_the_base_weights(bench_env):
    cnn = build_defense("cnn", "fmnist")
    save_checkpoint(cnn, bench_env / "ckpt" / "cnn-fmnist.safetensors", {"defense": "cnn"})
    d, card = load_defense("binary-cnn", "fmnist", device=CPU, train_if_missing=False)
    assert card["path"].endswith("cnn-fmnist.safetensors")
    for k, v in cnn.state_dict().items():
        torch.testing.assert_close(d.base.state_dict()[k], v)
    assert not d.training and not d.base.training
