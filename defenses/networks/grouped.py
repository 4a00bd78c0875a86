"""Thesis Table 2.1 modules, ``G`` independent copies evaluated as one grouped tensor program.

ABS needs one decoder per class and (without a shared encoder) one encoder per class. Looping over
classes in Python launches ``K`` small kernels per layer; here the ``G`` copies are packed into the
channel dimension of grouped convolutions (``groups=G``) and batched matrix products, so one call
evaluates every copy on every input. Copy ``g`` of a layer only sees channel block ``g`` of its
input, which makes the packed module mathematically identical to ``G`` separate modules.

Shapes: latents ``(N, G, L)``; images ``(N, G, C, H, W)``.

**Execution path by device.** The packed (grouped) program is the fast path on a GPU: one kernel
per layer for all copies. On a CPU, grouped *transposed* convolutions miss oneDNN's fast path
(and their weight gradients take a slow reference kernel), so there the copies run one after
another as ordinary convolutions on the same parameters (views of the packed weights: the state
dict is unchanged) in channels-last layout, oneDNN's native one: measured for the ten Table 2.1
Fashion-MNIST decoders, batch 512, forward + backward, two threads: grouped 2.7 s, per-copy NCHW
1.0 s, per-copy channels-last 0.79 s (``benchmarks/abs_training.py`` times the whole training
step). Dropout masks are drawn once on the packed tensor in both paths, so both paths consume the
same random numbers and compute the same function; they differ only by rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from defenses.networks import DROPOUT, Layout


def per_group_default(device: torch.device, groups: int) -> bool:
    """Whether a packed module runs copy by copy on ``device`` (see the module docstring): on CPUs."""
    return groups > 1 and device.type == "cpu"


def _group_layer(m: nn.Module, x: torch.Tensor, g: int, groups: int) -> torch.Tensor:
    """Apply copy ``g`` of the packed layer ``m`` to ``x`` (that copy's channels only), using views
    of ``m``'s parameters and running statistics (BatchNorm updates its slice in place)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.groups != groups:
        raise ValueError(f"{type(m).__name__} has groups={m.groups}, expected the packed module's {groups}")
    if isinstance(m, nn.Conv2d):  # weight (out, in/G, kh, kw): copy g owns rows [g*out/G, (g+1)*out/G)
        o = m.out_channels // groups
        w = m.weight.view(groups, o, *m.weight.shape[1:])[g]
        b = None if m.bias is None else m.bias.view(groups, o)[g]
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation)
    if isinstance(m, nn.ConvTranspose2d):  # weight (in, out/G, kh, kw): copy g owns rows [g*in/G, (g+1)*in/G)
        i, o = m.in_channels // groups, m.out_channels // groups
        w = m.weight.view(groups, i, *m.weight.shape[1:])[g]
        b = None if m.bias is None else m.bias.view(groups, o)[g]
        return F.conv_transpose2d(x, w, b, m.stride, m.padding, m.output_padding, 1, m.dilation)
    if isinstance(m, nn.BatchNorm2d):
        c = m.num_features // groups
        sl = slice(g * c, (g + 1) * c)
        training = m.training or m.running_mean is None
        rm = None if m.running_mean is None else m.running_mean[sl]
        rv = None if m.running_var is None else m.running_var[sl]
        w = None if m.weight is None else m.weight[sl]
        b = None if m.bias is None else m.bias[sl]
        # momentum None = cumulative average; num_batches_tracked is incremented after all copies ran
        momentum = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked + 1)
        return F.batch_norm(x, rm, rv, w, b, training, momentum, m.eps)
    return m(x)


def run_per_group(layers: list[nn.Module], x: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Run the packed ``layers`` copy by copy on the packed NCHW input ``x``; returns the ``groups``
    outputs, channels-last. Equal to the packed program up to rounding (same parameters)."""
    c = x.shape[1] // groups
    outs = []
    for g in range(groups):
        h = x[:, g * c : (g + 1) * c].contiguous(memory_format=torch.channels_last)
        for m in layers:
            h = _group_layer(m, h, g, groups)
        outs.append(h)
    for m in layers:  # what BatchNorm2d.forward does once per call
        if isinstance(m, nn.BatchNorm2d) and m.training and m.track_running_stats and m.num_batches_tracked is not None:
            m.num_batches_tracked.add_(1)
    return outs


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

    #: run the convolutions copy by copy in channels-last layout: None = by device (module docstring)
    per_group: bool | None = None
    #: run the convolutions of a single (``G == 1``) encoder in channels-last layout. Off by default:
    #: measured for the Fashion-MNIST encoder, batch 512, forward + backward, one thread (profiler):
    #: NCHW 254 ms, channels-last 273 ms (layout copies in the backward pass)
    channels_last: bool = False

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
        layers = list(self.convs)
        convs, drop = layers[:-1], layers[-1]
        split = self.per_group if self.per_group is not None else per_group_default(x.device, self.groups)
        if split:
            h = torch.cat(run_per_group(convs, x, self.groups), 1)
        else:
            h = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            for m in convs:
                h = m(h)
        # dropout on the NCHW-ordered packed features: the same mask (random draws) on every path
        h = drop(h.contiguous())
        n = h.shape[0]
        h = h.reshape(n, self.groups, -1)
        return self.mu(h), self.logvar(h)


class GroupedDecoder(nn.Module):
    """``G`` Table 2.1 decoders: linear -> dropout -> conv-transpose stack (BN + ReLU, last sigmoid).

    ``(N, G, L) -> (N, G, C, H, W)``; decoder ``g`` decodes latent ``[:, g]``.
    """

    #: run the transposed convolutions copy by copy, channels-last: None = by device (module docstring)
    per_group: bool | None = None

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
        h = h.reshape(n, -1, 1, 1)
        split = self.per_group if self.per_group is not None else per_group_default(h.device, self.groups)
        if split:
            return torch.stack(run_per_group(list(self.net), h, self.groups), 1).contiguous()
        out = self.net(h)
        return out.view(n, self.groups, -1, out.shape[-2], out.shape[-1])


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
