"""Image datasets as in-memory uint8 tensors, loaded with torchvision's own dataset classes.

Every dataset is returned whole as `ImageData` (N x C x H x W uint8 plus int64 labels), so that clients,
the server and the defenses index one shared array instead of copying partitions.
Pixel values stay in [0, 255]; `to_float` maps a batch to [0, 1], the space triggers live in. The
normalisation to the dataset's mean/std happens inside the model.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets as tvd

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetNotFoundError(RuntimeError):
    """The dataset is in none of the places searched; the message says how to get it."""


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset, known without loading it."""

    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


@dataclass
class ImageData:
    """A dataset's train and test split as uint8 image tensors and int64 labels."""

    spec: DatasetSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


SPECS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,),
        "install the Debian package (apt-get install -y dataset-fashion-mnist), set data-root to a "
        "torchvision root holding FashionMNIST/raw/, or allow download=true with network access"),
    "mnist": DatasetSpec(
        "mnist", 1, 28, 10, (0.1307,), (0.3081,),
        "set data-root to a torchvision root holding MNIST/raw/, or allow download=true with network access"),
    "cifar10": DatasetSpec(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "set data-root to a torchvision root holding cifar-10-batches-py/, or allow download=true "
        "with network access"),
    "gtsrb": DatasetSpec(
        "gtsrb", 3, 32, 43, (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669),
        "set data-root to a torchvision root holding gtsrb/, or allow download=true with network access"),
}


def cache_root() -> Path:
    """Folder for datasets fl-defense prepares or downloads (FL_DEFENSE_DATA overrides)."""
    env = os.environ.get("FL_DEFENSE_DATA")
    return Path(env) if env else Path.home() / ".cache" / "fl-defense" / "data"


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]."""
    return x.float().div_(255.0)


def _from_mnist_like(cls: type[tvd.MNIST], root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    return (train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long())


def _from_cifar10(root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    train = tvd.CIFAR10(str(root), train=True, download=download)
    test = tvd.CIFAR10(str(root), train=False, download=download)

    def chw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    return (chw(train.data), torch.tensor(train.targets), chw(test.data), torch.tensor(test.targets))


def _gtsrb_split(root: Path, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
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


def _from_gtsrb(root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    return (*_gtsrb_split(root, "train", download), *_gtsrb_split(root, "test", download))


LOADERS: dict[str, Callable[[Path, bool], tuple[torch.Tensor, ...]]] = {
    "fashion-mnist": lambda root, dl: _from_mnist_like(tvd.FashionMNIST, root, dl),
    "mnist": lambda root, dl: _from_mnist_like(tvd.MNIST, root, dl),
    "cifar10": _from_cifar10,
    "gtsrb": _from_gtsrb,
}


def prepare_debian_fashion_mnist(source: Path = DEBIAN_FASHION_MNIST, root: Path | None = None) -> Path | None:
    """Gunzip the Debian package's Fashion-MNIST into a torchvision root; None when it is absent.

    The package re-compresses the files, so their .gz bytes differ from the originals and torchvision's
    md5 check would reject them: they are decompressed, never copied.
    """
    if not all((source / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        return None
    root = root or cache_root()
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        target = raw / name
        if target.is_file():
            continue
        tmp = raw / f".{name}.tmp"
        with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return root


def _load_from(name: str, root: Path, download: bool) -> ImageData:
    train_x, train_y, test_x, test_y = LOADERS[name](root, download)
    return ImageData(SPECS[name], train_x.contiguous(), train_y, test_x.contiguous(), test_y)


def load_dataset(name: str, data_root: str = "", download: bool = True) -> ImageData:
    """Load a dataset, searching: `data_root`; for Fashion-MNIST the Debian package; then torchvision.

    A `data_root` that is given but holds no dataset is an error (not a silent fallback), so a
    typo in a path is never hidden by another copy of the data.
    """
    if name not in SPECS:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; known: {', '.join(SPECS)}")
    spec = SPECS[name]
    if data_root:
        try:
            return _load_from(name, Path(data_root), download=False)
        except (RuntimeError, FileNotFoundError) as exc:
            raise DatasetNotFoundError(
                f"dataset {name!r} not found under data-root {data_root!r} ({exc}); {spec.how_to_get}") from None
    if name == "fashion-mnist":
        root = prepare_debian_fashion_mnist()
        if root is not None:
            return _load_from(name, root, download=False)
    try:
        return _load_from(name, cache_root(), download=download)
    except (RuntimeError, OSError) as exc:
        raise DatasetNotFoundError(f"dataset {name!r} not found ({exc}); {spec.how_to_get}") from None
