"""Thesis Table 2.1 modules, ``G`` independent copies evaluated as one grouped tensor program.

ABS needs one decoder per class and (without a shared encoder) one encoder per class. Looping over
classes in Python launches ``K`` small kernels per layer; here the ``G`` copies are packed into the
channel dimension of grouped convolutions (``groups=G``) and batched matrix products, so one call
evaluates every copy on every input. Copy ``g`` of a layer only sees channel block ``g`` of its
input, which makes the packed module mathematically identical to ``G`` separate modules.

Shapes: latents ``(N, G, L)``; images ``(N, G, C, H, W)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from defenses.networks import DROPOUT, Layout


class GroupedLinear(nn.Module):
    """``G`` independent linear maps: ``(N, G, I) -> (N, G, O)``."""

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (G, N, I) @ (G, I, O) -> (G, N, O): one batched matmul for all groups
        return torch.baddbmm(self.bias[:, None, :], x.transpose(0, 1), self.weight).transpose(0, 1)


class GroupedEncoder(nn.Module):
    """``G`` Table 2.1 encoders (conv + BN + LeakyReLU, dropout, mean / log-variance heads).

    Input ``(N, G, C, H, W)`` (copy ``g`` encodes slice ``g``) or ``(N, C, H, W)`` when ``G == 1``.
    Output ``(mu, logvar)``, each ``(N, G, L)``.
    """

    def __init__(self, input_shape: tuple[int, int, int], layout: Layout, groups: int = 1):
        super().__init__()
        self.groups = groups
        c = input_shape[0]
        layers: list[nn.Module] = []
        for s in layout.encoder:
            layers += [
                nn.Conv2d(c * groups, s.channels * groups, s.kernel, s.stride, s.padding, groups=groups, bias=False),
                nn.BatchNorm2d(s.channels * groups),
                nn.LeakyReLU(0.2),
            ]
            c = s.channels
        layers.append(nn.Dropout(DROPOUT))
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            h = self.convs.eval()(torch.zeros(1, input_shape[0] * groups, *input_shape[1:]))
        self.convs.train()
        self.features = h.shape[1] // groups * h.shape[2] * h.shape[3]
        self.mu = GroupedLinear(groups, self.features, layout.latent)
        self.logvar = GroupedLinear(groups, self.features, layout.latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() == 5:
            x = x.flatten(1, 2)
        h = self.convs(x)
        n = h.shape[0]
        h = h.view(n, self.groups, -1)
        return self.mu(h), self.logvar(h)


class GroupedDecoder(nn.Module):
    """``G`` Table 2.1 decoders: linear -> dropout -> conv-transpose stack (BN + ReLU, last sigmoid).

    ``(N, G, L) -> (N, G, C, H, W)``; decoder ``g`` decodes latent ``[:, g]``.
    """

    def __init__(self, layout: Layout, out_shape: tuple[int, int, int], groups: int):
        super().__init__()
        self.groups = groups
        self.out_shape = tuple(out_shape)
        first = layout.decoder[0].channels
        self.fc = GroupedLinear(groups, layout.latent, first)
        self.drop = nn.Dropout(DROPOUT)
        layers: list[nn.Module] = []
        c = first
        for i, s in enumerate(layout.decoder):
            layers.append(nn.ConvTranspose2d(c * groups, s.channels * groups, s.kernel, s.stride, s.padding, groups=groups))
            if i == len(layout.decoder) - 1:
                layers.append(nn.Sigmoid())
            else:
                layers += [nn.BatchNorm2d(s.channels * groups), nn.ReLU()]
            c = s.channels
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            got = self.eval()(torch.zeros(1, groups, layout.latent)).shape[2:]
        self.train()
        if tuple(got) != self.out_shape:
            raise ValueError(f"decoder layout produces {tuple(got)}, expected {self.out_shape}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        h = self.drop(self.fc(z))  # (N, G, first)
        out = self.net(h.reshape(n, -1, 1, 1))
        return out.view(n, self.groups, *out.shape[1:]) if False else out.view(n, self.groups, -1, out.shape[-2], out.shape[-1])


class GroupedDiscriminator(nn.Module):
    """``G`` two-layer latent discriminators (AAE, thesis Figure 2.2): ``(N, G, L) -> (N, G)`` logits."""

    def __init__(self, layout: Layout, groups: int = 1):
        super().__init__()
        dims = (layout.latent, *layout.discriminator)
        self.layers = nn.ModuleList(GroupedLinear(groups, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = GroupedLinear(groups, dims[-1], 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in self.layers:
            h = self.act(layer(h))
        return self.out(h).squeeze(-1)


@torch.no_grad()
def fold_batchnorm(seq: nn.Sequential) -> nn.Sequential:
    """Inference copy of ``seq`` with each BatchNorm folded into the (transposed) convolution before it."""
    layers = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(nxt, nn.BatchNorm2d):
            scale = nxt.weight / torch.sqrt(nxt.running_var + nxt.eps)
            shift = nxt.bias - nxt.running_mean * scale
            new = type(m)(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, groups=m.groups, bias=True).to(m.weight.device)
            w = m.weight.clone()
            if isinstance(m, nn.Conv2d):  # weight (out, in/g, kh, kw)
                w = w * scale[:, None, None, None]
            else:  # ConvTranspose2d weight (in, out/g, kh, kw); out channel o = g*(out/g) + j
                g = m.groups
                inper, outper = m.in_channels // g, m.out_channels // g
                w = (w.view(g, inper, outper, *w.shape[2:]) * scale.view(g, 1, outper, 1, 1)).view_as(w)
            bias = m.bias if m.bias is not None else torch.zeros_like(scale)
            new.weight.copy_(w)
            new.bias.copy_(bias * scale + shift)
            out.append(new)
            i += 2
        elif isinstance(m, nn.Dropout):
            i += 1
        else:
            out.append(m)
            i += 1
    folded = nn.Sequential(*out).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
