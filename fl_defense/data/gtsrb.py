"""GTSRB (Stallkamp et al. 2012): German traffic signs, 43 classes, resized once to 32x32. Not available offline
here: the colour paths are tested on data the tests make."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision import datasets as tvd

from fl_defense.data.datasets import Dataset, DatasetSpec, Tensors, register


def _split(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GTSRB images vary in size: resize once to 32x32 and keep a tensor cache beside the data."""
    cache = root / "gtsrb" / f"fl_defense_{split}_32.pt"
    if cache.is_file():
        blob = torch.load(cache, weights_only=True)
        return blob["x"], blob["y"]
    from torchvision.transforms import v2

    to_tensor = v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True)])
    ds = tvd.GTSRB(str(root), split=split, download=download, transform=to_tensor)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    x, y = torch.stack(xs), torch.tensor(ys)
    # Written aside then renamed: client actors load concurrently and must never read a partial cache.
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    torch.save({"x": x, "y": y}, tmp)
    tmp.replace(cache)
    return x, y


def _load(root: Path, download: bool) -> Tensors:
    return (*_split(root, "train", download), *_split(root, "test", download))


GTSRB = register(Dataset(
    DatasetSpec("gtsrb", 3, 32, 43, (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669),
                "set data-root to a torchvision root holding gtsrb/, or allow download=true with network access"),
    _load), "GTSRB: German traffic signs resized to 32x32, 43 classes (not available offline here)")
