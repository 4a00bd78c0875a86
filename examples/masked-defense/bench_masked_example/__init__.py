"""Two plugin defenses with the same decision and different declared gradients.

``quantized-cnn`` rounds its input to 16 grey levels before the data set's ``cnn`` and declares
plain autograd as its attack gradient: ``round`` has a zero derivative, so every gradient attack
sees zero gradients (gradient masking, Athalye et al. 2018). ``quantized-cnn-bpda`` makes the same
decision and declares the straight-through (BPDA identity) gradient an adaptive attacker would use.
The harness must not rank the first above the second: its default suites contain attacks that do not
use the declared gradient (Square, transfer from the reference CNN), and its trust checks mark the
first row unreliable. Both reuse the ``cnn`` checkpoint (no training of their own).
"""

from __future__ import annotations

import torch

from defenses.base import Defense, bpda_identity
from defenses.cnn import CNN

LEVELS = 16


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to ``LEVELS`` grey levels in [0, 1]."""
    return torch.round(x * (LEVELS - 1)) / (LEVELS - 1)


class QuantizedCNN(Defense):
    """The ``cnn`` on inputs quantised to 16 levels; plain autograd (zero gradient: masked)."""

    name = "quantized-cnn"
    paper = "example plugin: input quantisation in front of the thesis CNN (a gradient-masking test case)"
    gradient_policy = "plain autograd through the rounding (zero almost everywhere)"

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.classifier = CNN(num_classes=num_classes, input_shape=input_shape, dataset=dataset)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x)

    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.classifier.predict(self.transform(x))

    def checkpoint_name(self) -> str:
        return "cnn"

    def checkpoint_module(self) -> torch.nn.Module:
        return self.classifier

    def default_train_config(self, dataset: str) -> dict:
        return self.classifier.default_train_config(dataset)

    def fit(self, train, val, *, config, device, generator, progress=True) -> dict:
        return self.classifier.fit(train, val, config=config, device=device, generator=generator, progress=progress)


class QuantizedCNNBPDA(QuantizedCNN):
    """The same decision with the adaptive attacker's straight-through gradient (BPDA identity)."""

    name = "quantized-cnn-bpda"
    gradient_policy = "straight-through BPDA identity over the rounding, then the CNN's autograd gradient"

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return bpda_identity(quantize, x)
