"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks", BMVC).

WRN-d-k for 32x32 inputs (paper section 2, Table 1): a 3x3 convolution with 16 channels, three groups
of ``N = (d - 4) / 6`` pre-activation basic blocks B(3,3) with ``16k``, ``32k`` and ``64k`` channels
(strides 1, 2, 2), a final BN-ReLU, global average pooling and one linear layer. Each block is
BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus a shortcut; a group's first block, where the width or
the resolution changes, projects the shortcut with a 1x1 convolution of the *pre-activated* input
(the BN-ReLU output is shared by both branches there, as in the authors' Torch code).

Module and parameter names follow the TRADES / RobustBench definition
(``robustbench/model_zoo/architectures/wide_resnet.py``: ``conv1``, ``block{1,2,3}.layer.{i}``
with ``bn1``, ``conv1``, ``bn2``, ``conv2``, ``convShortcut``, then ``bn1`` and ``fc``), so a
RobustBench state dict loads with ``strict=True``. ``sub_block1``: some RobustBench entries
(e.g. Carmon et al. 2019) carry a second, *unused* copy of the first group in their checkpoints;
the option creates it so those files load strictly, and the forward pass ignores it as theirs does.
``mean`` / ``std``: per-channel input normalisation inside the network (buffers ``mu`` / ``sigma``,
RobustBench's names), so the model takes images in [0, 1].
Written from the paper in plain torch (torchvision is not available here).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class WideBasic(nn.Module):
    """Pre-activation basic block B(3,3) of a WRN (paper Figure 1c/d, dropout between the convolutions)."""

    def __init__(self, in_planes: int, out_planes: int, *, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_planes == out_planes and stride == 1
        # the name of RobustBench's / TRADES' checkpoints
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class WideGroup(nn.Module):
    """One group conv{2,3,4} of paper Table 1: ``n`` blocks, the first one changing width / stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, *, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(*[WideBasic(in_planes if i == 0 else out_planes, out_planes, stride=stride if i == 0 else 1, drop_rate=drop_rate) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 3x32x32 images in [0, 1]; returns logits.

    ``depth`` must be ``6N + 4`` (28 -> 4 blocks per group, 34 -> 5). WRN-28-10 has 36.5 M
    parameters, WRN-34-10 46.2 M. Weights are He-initialised (paper section 3, as in the authors' code).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, *, num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0,
                 sub_block1: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6N + 4 with N >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = int(depth), int(widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideGroup(n, widths[0], widths[1], stride=1, drop_rate=drop_rate)
        if sub_block1:  # unused in forward; present in some checkpoints
            self.sub_block1 = WideGroup(n, widths[0], widths[1], stride=1, drop_rate=drop_rate)
        self.block2 = WideGroup(n, widths[1], widths[2], stride=2, drop_rate=drop_rate)
        self.block3 = WideGroup(n, widths[2], widths[3], stride=2, drop_rate=drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for the input normalisation, or neither")
        if mean is not None:
            self.register_buffer("mu", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
            self.register_buffer("sigma", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "mu"):
            x = (x - self.mu) / self.sigma
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
