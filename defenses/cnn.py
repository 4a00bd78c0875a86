"""CNN baseline (thesis section 2.3 "Models"): the E-ABS encoder's trunk plus a linear layer.

Thesis Table 2.1 gives the encoder; "CNNs add a linear layer after E-ABS's encoder for
classification". We put the linear layer on the flattened convolutional features (the encoder
without its mean/variance heads), which keeps the CNN from being squeezed through the 10-d latent.

The CNN family (``cnn``, ``cnn-gauss`` and the adversarially trained ``adv-*`` of
:mod:`defenses.adversarial`) takes one option, ``arch``: ``"table2.1"`` (default, the network
above) or ``"resnet18"`` or ``"resnet50"`` (:mod:`defenses.resnet`, 32x32 RGB data sets only;
``bench train --arch resnet18``; ResNet-50 is the network of Vuong's CIFAR-10 report). A non-default arch gets its own checkpoint, ``<name>-<arch>-<dataset>``.
"""

from __future__ import annotations

import torch
from torch import nn

from defenses.base import Defense
from defenses.networks import ConvTrunk, layout_for, trunk_features
from defenses.registry import register
from defenses.resnet import RESNET_DATASETS, ResNet18, ResNet50, resnet_recipe
from defenses.training import NOISE_SIGMA, supervised_recipe, train_classifier
from benchcore.errors import BenchUserError

DEFAULT_ARCH = "table2.1"
ARCHS = (DEFAULT_ARCH, "resnet18", "resnet50")
_RESNETS = {"resnet18": ResNet18, "resnet50": ResNet50}


class CNNNet(nn.Module):
    """Encoder trunk (Table 2.1) + linear classifier; returns logits."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dataset: str):
        super().__init__()
        self.trunk = ConvTrunk(input_shape[0], layout_for(dataset).encoder)
        self.head = nn.Linear(trunk_features(self.trunk, input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_net(arch: str, input_shape: tuple[int, int, int], num_classes: int, dataset: str) -> nn.Module:
    """The logits network of the CNN family for ``arch`` (``table2.1``: :class:`CNNNet`; ``resnet18`` /
    ``resnet50``: :class:`ResNet18` / :class:`ResNet50`)."""
    if arch == DEFAULT_ARCH:
        return CNNNet(input_shape, num_classes, dataset)
    if arch in _RESNETS:
        if dataset not in RESNET_DATASETS:
            raise BenchUserError(f"--arch {arch} is for the 32x32 RGB data sets ({', '.join(RESNET_DATASETS)}), not {dataset!r}; drop --arch")
        return _RESNETS[arch](input_shape, num_classes)
    raise BenchUserError(f"unknown --arch {arch!r}; known: {', '.join(ARCHS)}")


def arch_checkpoint_name(name: str, arch: str) -> str:
    """Checkpoint name of defense ``name`` with ``arch``: ``name`` for the default arch, else ``name-arch``."""
    return name if arch == DEFAULT_ARCH else f"{name}-{arch}"


@register
class CNN(Defense):
    """Undefended CNN trained with additive Gaussian noise augmentation (thesis section 2.3)."""

    name = "cnn"
    paper = "Ju 2021, thesis section 2.3 (CNN baseline, Table 2.1 encoder + linear layer)"
    gradient_policy = "exact autograd gradient of the logits"

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str, arch: str = DEFAULT_ARCH):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.arch = str(arch)
        self.net = build_net(self.arch, self.input_shape, num_classes, dataset)

    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(x)

    def noise_sigma(self, dataset: str) -> float:
        """Std of the additive Gaussian training noise (thesis section 2.3: 0.2 MNIST/FMNIST, 0.01 otherwise)."""
        return NOISE_SIGMA.get(dataset, 0.01)

    def default_train_config(self, dataset: str) -> dict:
        """Thesis recipe (Adam, batch 512, noise) for ``table2.1``; the ResNet recipe for ``resnet18`` / ``resnet50``.

        An instance method (the recipe depends on ``arch``); the harness calls it on instances.
        """
        if self.arch in _RESNETS:
            return resnet_recipe(dataset, noise_sigma=self.noise_sigma(dataset), arch=self.arch)
        return dict(supervised_recipe(dataset), noise_sigma=self.noise_sigma(dataset))

    def checkpoint_name(self) -> str:
        """``cnn`` for the Table 2.1 network, ``cnn-resnet18`` / ``cnn-resnet50`` for the ResNets (the archs never share weights)."""
        return arch_checkpoint_name(self.name, self.arch)

    def extra_info(self) -> dict:
        return {"arch": self.arch}

    def fit(self, train, val, *, config, device, generator, progress=True, resume=None, on_epoch_end=None) -> dict:
        """Thesis section 2.3 recipe; ``resume`` / ``on_epoch_end`` make ``bench train --resume`` exact
        (:func:`defenses.training.train_classifier`)."""
        return train_classifier(self.net, train, val, config=config, device=device, generator=generator, progress=progress,
                                desc=f"train {self.checkpoint_name()}", resume=resume, on_epoch_end=on_epoch_end)


@register
class CNNGauss(CNN):
    """The CNN trained from scratch with Gaussian-noise augmentation sigma 0.05 on every data set
    (thesis chapter 4, "Bare Gaussian": the variational method's noise prior used as data augmentation)."""

    name = "cnn-gauss"
    paper = "Ju 2021, thesis chapter 4 (Bare Gaussian: classifier trained with Gaussian noise, sigma 0.05)"

    #: thesis chapter 4: "By default, the Gaussian noise's standard deviation is 0.05"
    SIGMA = 0.05

    def noise_sigma(self, dataset: str) -> float:
        return self.SIGMA
