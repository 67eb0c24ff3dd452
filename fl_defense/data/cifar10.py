"""CIFAR-10 (Krizhevsky 2009): 60,000 colour 32x32 images of 10 classes. Not available offline here: the colour
paths are tested on data the tests make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tvd

from fl_defense.data.datasets import Dataset, DatasetSpec, Tensors, register


def _load(root: Path, download: bool) -> Tensors:
    train = tvd.CIFAR10(str(root), train=True, download=download)
    test = tvd.CIFAR10(str(root), train=False, download=download)

    def chw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    return (chw(train.data), torch.tensor(train.targets), chw(test.data), torch.tensor(test.targets))


CIFAR10 = register(Dataset(
    DatasetSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "set data-root to a torchvision root holding cifar-10-batches-py/, or allow download=true "
                "with network access"),
    _load), "CIFAR-10: 60,000 colour 32x32 images, 10 classes (not available offline here)")
