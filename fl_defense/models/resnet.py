"""CIFAR-style ResNet-18 (3x3 stem, no max-pool) for 3x32x32 images, as in the backdoor literature (DBD, CNP).

On grey 28x28 images (Fashion-MNIST) the stem takes one channel and the four stages are 28, 14, 7 and 4 pixels
wide instead of 32, 16, 8 and 4.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.data.datasets import DatasetSpec
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@MODELS.register("resnet18")
class ResNet18(BackdoorModel):
    """ResNet-18 with 512-d penultimate features (global average pool of the last stage)."""

    def __init__(self, in_channels: int, num_classes: int, size: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    @classmethod
    def for_dataset(cls, spec: DatasetSpec) -> ResNet18:
        return cls(spec.channels, spec.num_classes, spec.size, spec.mean, spec.std)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def embed_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Records each stage's output (after blocks 1, 3, 5, 7: two BasicBlocks a stage)."""
        out, maps = self.stem(x), []
        for i, block in enumerate(self.layers):
            out = block(out)
            if i % 2 == 1:
                maps.append(out)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1), maps

    @torch.no_grad()
    def prune_channels(self, channels: torch.Tensor) -> None:
        """Zero the columns of `head.weight` that read `channels`.

        The last stage ends in a residual sum, so zeroing a BatchNorm would not silence a channel (the
        shortcut still carries it); the only consumer of the last stage is the head, through the
        global-average-pooled features, so cutting those columns removes the channels' effect entirely.
        """
        self.head.weight[:, channels] = 0.0

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
