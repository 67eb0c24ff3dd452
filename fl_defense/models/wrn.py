"""WRN-16-1 (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016): the model of the MCL and ABL papers.

Depth 16 (three groups of two pre-activation basic blocks, widths 16, 32, 64 at widen factor 1), a 3x3 stem,
global average pooling of the last group after a final BN-ReLU. As in those papers' CIFAR-10 code, for 3x32x32;
on grey 28x28 images (Fashion-MNIST) only the stem's input channels change, and the groups' maps are 28, 14 and
7 pixels wide instead of 32, 16 and 8. No dropout (the backdoor papers train WRN-16-1 without it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.data.datasets import DatasetSpec
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import MODELS


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (through a 1x1 conv of the activated input when the
    shape changes), as in the WRN paper's basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


@MODELS.register("wrn16-1")
class WRN16(BackdoorModel):
    """WRN-16-1 (the MCL and ABL papers' model): pre-activation blocks, widths 16/32/64, 64-d penultimate features."""

    def __init__(self, in_channels: int, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 widen: int = 1, blocks: int = 2) -> None:
        super().__init__(mean, std)
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.groups = nn.ModuleList()
        cin = 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            self.groups.append(nn.Sequential(*(PreActBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                                               for i in range(blocks))))
            cin = width
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    @classmethod
    def for_dataset(cls, spec: DatasetSpec) -> WRN16:
        return cls(spec.channels, spec.num_classes, spec.mean, spec.std)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_with_maps(x)[0]

    def embed_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Records each group's output; the last is after the final BN-ReLU (what the head reads, pooled)."""
        out, maps = self.stem(x), []
        for group in self.groups:
            out = group(out)
            maps.append(out)
        maps[-1] = out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1), maps

    @torch.no_grad()
    def prune_channels(self, channels: torch.Tensor) -> None:
        """Zero the final BatchNorm's weight and bias for `channels`: it then outputs 0 for them, ReLU(0) = 0, and
        the head never sees them (the residual sums all come before this BN); the zeros travel in the state."""
        self.bn.weight[channels] = 0.0
        self.bn.bias[channels] = 0.0

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
