"""CIFAR-style ResNet-18 and ResNet-50 (He et al. 2016, "Deep Residual Learning", section 4.2 CIFAR-10 variant).

The ImageNet ResNet-18 of He et al. (Table 1) with the CIFAR adaptations that are standard for 32x32
inputs: a 3x3 stride-1 stem without max-pooling, four stages of two BasicBlocks with 64/128/256/512
channels (strides 1/2/2/2), global average pooling and one linear layer. 11.17 M parameters for 10
classes. Thesis chapter 4 ("Bare Gaussian") and Vuong's CIFAR-10 report use ResNets on CIFAR-10;
here it is the ``--arch resnet18`` option of the CNN family on 32x32 RGB data sets. Written in plain
torch (torchvision is not available).

ResNet-50 (``--arch resnet50``, the network of Vuong's CIFAR-10 report): the same CIFAR stem (3x3,
stride 1, no max-pooling) with He et al.'s Table 1 ResNet-50 body, stages of [3, 4, 6, 3] Bottleneck
blocks (1x1 - 3x3 - 1x1 convolutions, expansion 4, stride on the 3x3 as in torchvision's "v1.5"),
64/128/256/512 base widths, global average pooling and one linear layer: 23.52 M parameters for 10
classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchcore.errors import BenchUserError

#: data sets whose images are 32x32 RGB (the ResNet-18 stem and pooling assume this size)
RESNET_DATASETS = ("cifar10", "svhn", "supertraffic10", "gtsrb")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 (reduce) - 3x3 (stride) - 1x1 (expand x4) conv-BN layers, projection shortcut when the shape changes, ReLU after the sum."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, stages [2, 2, 2, 2] x BasicBlock (64-512 channels), avg-pool, linear; returns logits."""

    block: type[nn.Module] = BasicBlock
    arch = "resnet18"
    default_blocks: tuple[int, ...] = (2, 2, 2, 2)

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: tuple[int, ...] | None = None):
        super().__init__()
        blocks = self.default_blocks if blocks is None else blocks
        c, h, w = (int(s) for s in input_shape)
        if (h, w) != (32, 32):
            raise BenchUserError(f"--arch {self.arch} needs 32x32 inputs (data sets {', '.join(RESNET_DATASETS)}), got {h}x{w}; drop --arch for this data set")
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} must have the same length")
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages = []
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(self.block(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes * self.block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.head(h)


class ResNet50(ResNet18):
    """CIFAR ResNet-50: 3x3 stem, stages [3, 4, 6, 3] x Bottleneck (256-2048 output channels), avg-pool, linear; returns logits."""

    block = Bottleneck
    arch = "resnet50"
    default_blocks = (3, 4, 6, 3)


def resnet_recipe(dataset: str, *, noise_sigma: float, arch: str = "resnet18") -> dict:
    """Training recipe of the ResNet-18 option (the usual CIFAR recipe, e.g. He et al. 2016 section 4.2).

    SGD with momentum 0.9 and weight decay 5e-4, batch 128, initial learning rate 0.1 annealed to 0
    with a cosine schedule (stepped per epoch) over 50 epochs (a GPU budget; CPU training of a
    ResNet-18 is not practical), random 32x32 crops of the 4-pixel zero-padded image, horizontal flips
    on CIFAR-10 only (flipping changes the meaning of digits and traffic signs), plus the data set's
    additive Gaussian noise augmentation of the CNN recipe.
    """
    return {
        "arch": arch,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_schedule": "cosine",
        "batch_size": 128,
        "epochs": 50,
        "augment": "crop-flip" if dataset == "cifar10" else "crop",
        "crop_padding": 4,
        "noise_sigma": float(noise_sigma),
    }
