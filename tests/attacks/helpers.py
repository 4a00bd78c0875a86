"""Tiny models for the attack-adapter tests (1x8x8 inputs, a handful of classes, CPU, milliseconds)."""

from __future__ import annotations

import torch
from torch import nn

from defenses.base import Defense


def linear_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    """A fixed random linear classifier on 1x8x8 inputs (easy to attack), in eval mode, no grads on weights."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, num_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, 64, generator=g))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def batch(model: nn.Module, n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in [0.2, 0.8] labelled with the model's own predictions (clean-correct by construction)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


class LinearDefense(Defense):
    """The linear model as a deterministic Defense."""

    name = "test-linear"
    trainable = False

    def __init__(self, *, num_classes: int = 4, input_shape=(1, 8, 8), dataset: str = "fmnist"):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.net = linear_model(num_classes)

    def predict(self, x, *, generator=None):
        return self.net(x)


class NoisyLinearDefense(LinearDefense):
    """The linear model on inputs with small Gaussian noise: a randomized Defense."""

    name = "test-noisy-linear"
    randomized = True
    NOISE = 0.02

    def predict(self, x, *, generator=None):
        return self.net(x + self.NOISE * torch.randn(x.shape, generator=generator, device=x.device))
