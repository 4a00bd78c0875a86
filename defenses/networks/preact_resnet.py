"""Pre-activation ResNet-18 for 32x32 images (He et al. 2016, "Identity Mappings in Deep Residual
Networks", ECCV; the CIFAR ResNet-18 layout of He et al. 2016 "Deep Residual Learning", section 4.2).

A 3x3 convolution with 64 channels (no BN-ReLU after it: the first block pre-activates), four stages
of two pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, identity mapping added after the
second convolution; paper Figure 4e) with 64/128/256/512 channels and strides 1/2/2/2, 4x4 average
pooling and one linear layer. Where a block changes width or resolution its shortcut is a 1x1
convolution (paper section 4.1).

Names and the two variants follow RobustBench's definition (``robustbench/model_zoo/architectures/
resnet.py``, ``PreActBlock`` / ``PreActBlockV2`` / ``PreActResNet``) so that its checkpoints (e.g.
Wong et al. 2020, "Fast is better than free") load strictly: ``conv1``, ``layer{1..4}.{0,1}`` with
``bn1``, ``conv1``, ``bn2``, ``conv2`` and ``shortcut.0``, then ``linear``.

* ``shortcut_from="input"`` (``PreActBlock``, default): the 1x1 projection reads the block's raw input;
  ``"preact"`` (``PreActBlockV2``, He et al.'s own code): it reads the BN-ReLU output.
* ``final_bn=True``: a final BN-ReLU (``bn``) before pooling, as in He et al. 2016 (``bn_before_fc``);
  the default follows Wong et al.'s network, which has none.
* ``mean`` / ``std``: input normalisation inside the network (buffers ``mu`` / ``sigma``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

SHORTCUTS = ("input", "preact")


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b, Figure 4e) with a 1x1 projection shortcut where needed."""

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut_from: str = "input"):
        super().__init__()
        if shortcut_from not in SHORTCUTS:
            raise ValueError(f"shortcut_from must be one of {', '.join(SHORTCUTS)}, got {shortcut_from!r}")
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut_from = shortcut_from
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(pre if self.shortcut_from == "preact" else x)
        else:
            shortcut = x
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 3x32x32 images in [0, 1]; returns logits (11.17 M parameters for 10 classes)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, blocks: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 shortcut_from: str = "input", final_bn: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4:
            raise ValueError(f"a PreAct ResNet has four stages; got blocks {tuple(blocks)} and widths {tuple(widths)}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks), start=1):
            layers = []
            for j in range(n):
                layers.append(PreActBlock(in_planes, planes, stride=2 if (i > 1 and j == 0) else 1, shortcut_from=shortcut_from))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        if final_bn:
            self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for the input normalisation, or neither")
        if mean is not None:
            self.register_buffer("mu", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
            self.register_buffer("sigma", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "mu"):
            x = (x - self.mu) / self.sigma
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if hasattr(self, "bn"):
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))
