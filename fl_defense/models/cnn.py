"""Small CNN for 1x28x28 images, with BatchNorm so BN-based defenses (CNP) apply."""

from __future__ import annotations

import torch
from torch import nn

from fl_defense.models.base import BackdoorModel


class SmallCNN(BackdoorModel):
    """conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, fc128-ReLU (features), fc-classes.

    Sized to train at about 4k images/s on one CPU thread, so a 10-client simulation fits in minutes.
    """

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

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)
