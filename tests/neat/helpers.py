"""Tiny source models for the NEAT tests."""

import torch

from defenses.base import Defense


class BrightnessModel(Defense):
    """Two classes on 1x8x8 images: class 0 for bright images, class 1 for dark ones (easy to fool)."""

    name = "brightness-stub"
    trainable = False

    def __init__(self, *, num_classes=2, input_shape=(1, 8, 8), dataset="fmnist", gain=30.0):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.gain = gain
        self.calls = 0

    def predict(self, x, *, generator=None):
        self.calls += 1
        m = self.gain * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([m, -m], dim=1)


class QuadrantModel(Defense):
    """Two classes on 1x8x8: class 0 wants bright top-left/bottom-right quadrants and dark others.

    A linear model whose preferred image needs an x*y interaction, which the initial CPPNs (sums of
    x, y, r, bias through one activation) rarely have: NEAT has to evolve it over some generations.
    """

    name = "quadrant-stub"
    trainable = False

    def __init__(self, *, gain=10.0):
        super().__init__(num_classes=2, input_shape=(1, 8, 8), dataset="fmnist")
        s = torch.sign(torch.linspace(-1, 1, 8))
        self.w = s[:, None] * s[None, :]
        self.gain = gain

    def predict(self, x, *, generator=None):
        m = self.gain * ((x[:, 0] - 0.5) * self.w).mean(dim=(1, 2))
        return torch.stack([m, -m], dim=1)
