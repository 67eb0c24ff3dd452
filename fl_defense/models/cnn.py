"""Small CNN for 1x28x28 images, with BatchNorm so BN-based defenses (CNP) apply."""

from __future__ import annotations

import torch
from torch import nn

from fl_defense.data.datasets import DatasetSpec
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import MODELS


@MODELS.register("cnn")
class SmallCNN(BackdoorModel):
    """conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, fc128-ReLU (features), fc-classes.

    Sized to train at about 4k images/s on one CPU thread, so a 10-client simulation fits in minutes.
    """

    # Indices in `body` of the two conv-BN-ReLU outputs (before pooling) and of the last BatchNorm.
    STAGE_ENDS = (2, 6)
    LAST_BN = 5

    def __init__(self, in_channels: int, num_classes: int, size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], width: int = 16) -> None:
        super().__init__(mean, std)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    @classmethod
    def for_dataset(cls, spec: DatasetSpec) -> SmallCNN:
        return cls(spec.channels, spec.num_classes, spec.size, spec.mean, spec.std)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def embed_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.STAGE_ENDS:
                maps.append(x)
        return x, maps

    @torch.no_grad()
    def prune_channels(self, channels: torch.Tensor) -> None:
        """Zero the last BatchNorm's weight and bias for `channels`.

        The BN then outputs exactly 0 for them in train and eval mode alike, ReLU(0) = 0, and nothing
        downstream sees them; being parameters, the zeros travel in the state_dict to clients.
        """
        bn = self.body[self.LAST_BN]
        bn.weight[channels] = 0.0
        bn.bias[channels] = 0.0

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
