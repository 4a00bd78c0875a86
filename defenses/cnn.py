"""CNN baseline (thesis section 2.3 "Models"): the E-ABS encoder's trunk plus a linear layer.

Thesis Table 2.1 gives the encoder; "CNNs add a linear layer after E-ABS's encoder for
classification". We put the linear layer on the flattened convolutional features (the encoder
without its mean/variance heads), which keeps the CNN from being squeezed through the 10-d latent.
"""

from __future__ import annotations

import torch
from torch import nn

from defenses.base import Defense
from defenses.networks import ConvTrunk, layout_for, trunk_features
from defenses.registry import register
from defenses.training import supervised_recipe, train_classifier


class CNNNet(nn.Module):
    """Encoder trunk (Table 2.1) + linear classifier; returns logits."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dataset: str):
        super().__init__()
        self.trunk = ConvTrunk(input_shape[0], layout_for(dataset).encoder)
        self.head = nn.Linear(trunk_features(self.trunk, input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@register
class CNN(Defense):
    """Undefended CNN trained with additive Gaussian noise augmentation (thesis section 2.3)."""

    name = "cnn"
    paper = "Ju 2021, thesis section 2.3 (CNN baseline, Table 2.1 encoder + linear layer)"
    gradient_policy = "exact autograd gradient of the logits"

    def __init__(self, *, num_classes: int, input_shape: tuple[int, int, int], dataset: str):
        super().__init__(num_classes=num_classes, input_shape=input_shape, dataset=dataset)
        self.net = CNNNet(self.input_shape, num_classes, dataset)

    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(x)

    @classmethod
    def default_train_config(cls, dataset: str) -> dict:
        return supervised_recipe(dataset)

    def fit(self, train, val, *, config, device, generator, progress=True) -> dict:
        return train_classifier(self.net, train, val, config=config, device=device, generator=generator, progress=progress, desc=f"train {self.name}")
