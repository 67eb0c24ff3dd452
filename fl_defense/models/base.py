"""The interface every model offers the defenses: pixels in [0, 1] in, `features` and `classify` out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class BackdoorModel(nn.Module):
    """A classifier split at its penultimate layer.

    Inputs are images in [0, 1] pixel space (where triggers are applied); the dataset's mean/std
    normalisation is the model's first step, held in non-persistent buffers so it never travels in
    an update. `features(x)` is the penultimate representation (what MCL and CNP contrast) and
    `classify(features)` the last layer. `feature_maps(x)` exposes the conv stages (NAD, fine-pruning)
    and `prune_channels` silences last-stage channels (fine-pruning).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of already-normalised inputs."""
        raise NotImplementedError

    def embed_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`embed` that also records each conv stage's output (N x C x H x W), in one pass.

        Kept apart from `embed` so the plain forward pass stays a straight `nn.Sequential` call.
        """
        raise NotImplementedError

    def prune_channels(self, channels: torch.Tensor) -> None:
        """Permanently silence these channels of the last conv stage, in the weights themselves."""
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of each conv stage for inputs in [0, 1], shallow to deep (the last is the last stage)."""
        return self.embed_with_maps(self.normalize(x))[1]

    def logits_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and `feature_maps` from one pass (attention distillation needs both)."""
        features, maps = self.embed_with_maps(self.normalize(x))
        return self.classify(features), maps


@contextmanager
def read_only(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The model on `device` in eval mode with its weights' gradients off, for an optimisation over inputs (a trigger
    inversion reads the weights, never trains them); each weight's `requires_grad` is restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
