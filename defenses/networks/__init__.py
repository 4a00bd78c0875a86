"""Per-dataset encoder / decoder / latent-discriminator modules of thesis Table 2.1.

All defenses of the thesis share these modules: the CNN baselines are the encoder's convolutional
trunk plus a linear layer; ABS and E-ABS use the encoder, one decoder per class and (E-ABS) the
latent discriminator. CIFAR-10 uses the SVHN layout (thesis section 2.5); GTSRB uses the
SuperTraffic-10 layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchcore.errors import BenchUserError


@dataclass(frozen=True)
class ConvSpec:
    channels: int
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Layout:
    """One block of thesis Table 2.1."""

    latent: int
    encoder: tuple[ConvSpec, ...]
    decoder: tuple[ConvSpec, ...]
    discriminator: tuple[int, ...]


_C = ConvSpec
MNIST_LAYOUT = Layout(
    latent=10,
    encoder=(_C(16, 5, 2, 2), _C(32, 5, 2, 2), _C(64, 5, 2, 2), _C(64, 4, 1, 1)),
    decoder=(_C(32, 4, 1, 0), _C(32, 5, 2, 0), _C(16, 5, 2, 0), _C(8, 4, 1, 0), _C(1, 1, 1, 0)),
    discriminator=(256, 128),
)
TRAFFIC_LAYOUT = Layout(
    latent=16,
    encoder=(_C(16, 5, 2, 2), _C(32, 5, 2, 2), _C(64, 5, 2, 2), _C(128, 4, 1, 0)),
    decoder=(_C(64, 4, 1, 0), _C(64, 4, 2, 1), _C(32, 4, 2, 1), _C(16, 4, 2, 1), _C(3, 1, 1, 0)),
    discriminator=(256, 128),
)
SVHN_LAYOUT = Layout(
    latent=40,
    encoder=(_C(32, 5, 2, 2), _C(64, 5, 2, 2), _C(128, 5, 2, 2), _C(128, 4, 1, 0)),
    decoder=(_C(64, 4, 1, 0), _C(64, 4, 2, 1), _C(32, 4, 2, 1), _C(16, 4, 2, 1), _C(3, 1, 1, 0)),
    discriminator=(512, 256),
)
LAYOUTS = {
    "mnist": MNIST_LAYOUT,
    "fmnist": MNIST_LAYOUT,
    "supertraffic10": TRAFFIC_LAYOUT,
    "gtsrb": TRAFFIC_LAYOUT,
    "svhn": SVHN_LAYOUT,
    "cifar10": SVHN_LAYOUT,
}

DROPOUT = 0.25  # the thesis uses dropout but does not give the rate


def layout_for(dataset: str) -> Layout:
    """The Table 2.1 layout used for ``dataset``."""
    try:
        return LAYOUTS[dataset]
    except KeyError:
        raise BenchUserError(f"no network layout for dataset {dataset!r}; known: {', '.join(sorted(LAYOUTS))}") from None


class ConvTrunk(nn.Module):
    """The encoder's convolutions: Conv -> BatchNorm -> LeakyReLU per layer, dropout after the last."""

    def __init__(self, in_channels: int, specs: tuple[ConvSpec, ...], *, dropout: float = DROPOUT):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for s in specs:
            layers += [nn.Conv2d(c, s.channels, s.kernel, s.stride, s.padding, bias=False), nn.BatchNorm2d(s.channels), nn.LeakyReLU(0.2)]
            c = s.channels
        layers += [nn.Dropout(dropout), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def trunk_features(trunk: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Flattened output size of ``trunk`` for one input of ``input_shape`` (computed, not hand-typed)."""
    with torch.no_grad():
        was = trunk.training
        trunk.eval()
        n = trunk(torch.zeros(1, *input_shape)).shape[1]
        trunk.train(was)
    return int(n)


class Encoder(nn.Module):
    """Thesis Table 2.1 encoder: conv trunk + two parallel linear heads (mean, log-variance)."""

    def __init__(self, input_shape: tuple[int, int, int], layout: Layout):
        super().__init__()
        self.trunk = ConvTrunk(input_shape[0], layout.encoder)
        f = trunk_features(self.trunk, input_shape)
        self.mu = nn.Linear(f, layout.latent)
        self.logvar = nn.Linear(f, layout.latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """Thesis Table 2.1 decoder: Linear -> dropout -> ConvTranspose stack (BN+ReLU, last sigmoid)."""

    def __init__(self, layout: Layout, out_shape: tuple[int, int, int]):
        super().__init__()
        first = layout.decoder[0].channels
        self.fc = nn.Sequential(nn.Linear(layout.latent, first), nn.Dropout(DROPOUT))
        layers: list[nn.Module] = []
        c = first
        for i, s in enumerate(layout.decoder):
            layers.append(nn.ConvTranspose2d(c, s.channels, s.kernel, s.stride, s.padding))
            last = i == len(layout.decoder) - 1
            layers += [nn.Sigmoid()] if last else [nn.BatchNorm2d(s.channels), nn.ReLU()]
            c = s.channels
        self.net = nn.Sequential(*layers)
        self.out_shape = tuple(out_shape)
        with torch.no_grad():
            was = self.training
            self.eval()
            got = tuple(self.forward(torch.zeros(1, layout.latent)).shape[1:])
            self.train(was)
        if got != self.out_shape:
            raise ValueError(f"decoder layout produces {got}, expected {self.out_shape}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z)
        return self.net(h[:, :, None, None])


class LatentDiscriminator(nn.Module):
    """Two-layer feed-forward discriminator on latent codes (AAE, thesis Figure 2.2)."""

    def __init__(self, layout: Layout):
        super().__init__()
        dims = (layout.latent, *layout.discriminator)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)
