"""Image datasets as in-memory uint8 tensors, loaded with torchvision's own dataset classes.

Every dataset is returned whole as `ImageData` (N x C x H x W uint8 plus int64 labels), so that clients,
the server and the defenses index one shared array instead of copying partitions.
Pixel values stay in [0, 255]; `to_float` maps a batch to [0, 1], the space triggers live in. The
normalisation to the dataset's mean/std happens inside the model. Each dataset is one module of this
package that registers a `Dataset` (its static facts and how torchvision loads it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets as tvd

from fl_defense.errors import ConfigError
from fl_defense.registry import DATASETS

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DatasetNotFoundError(ConfigError):
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


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: its spec, torchvision's loader (train x, y, test x, y from a root), and an optional
    local copy to prefer when no data-root is given (the Debian package of Fashion-MNIST)."""

    spec: DatasetSpec
    load: Callable[[Path, bool], Tensors]
    local_root: Callable[[], Path | None] = lambda: None


@dataclass
class ImageData:
    """A dataset's train and test split as uint8 image tensors and int64 labels."""

    spec: DatasetSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def register(dataset: Dataset, summary: str) -> Dataset:
    """Make a dataset selectable by its spec's name (config key `dataset`)."""
    return DATASETS.register(dataset.spec.name, summary=summary)(dataset)


def dataset_spec(name: str) -> DatasetSpec:
    """The static facts of a registered dataset."""
    return DATASETS[name].spec


def cache_root() -> Path:
    """Folder for datasets fl-defense prepares or downloads (FL_DEFENSE_DATA overrides)."""
    env = os.environ.get("FL_DEFENSE_DATA")
    return Path(env) if env else Path.home() / ".cache" / "fl-defense" / "data"


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1]."""
    return x.float().div_(255.0)


def mnist_like(cls: type[tvd.MNIST]) -> Callable[[Path, bool], Tensors]:
    """torchvision's loader for an MNIST-format dataset class, as N x 1 x 28 x 28 tensors."""

    def load(root: Path, download: bool) -> Tensors:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
        return (train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long())

    return load


def _load_from(dataset: Dataset, root: Path, download: bool) -> ImageData:
    """The dataset read from `root`; files that cannot be read, or images and labels that do not match, are a
    DatasetNotFoundError naming the folder."""
    spec = dataset.spec
    try:
        train_x, train_y, test_x, test_y = dataset.load(root, download)
    except (RuntimeError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - torchvision asserts, or raises on a truncated or foreign file
        raise DatasetNotFoundError(f"dataset {spec.name!r} under {str(root)!r} cannot be read "
                                   f"({type(exc).__name__}: {str(exc)[:120]}); {spec.how_to_get}") from None
    for split, x, y in (("training", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y) or tuple(x.shape[1:]) != spec.shape:
            raise DatasetNotFoundError(f"dataset {spec.name!r} under {str(root)!r}: its {split} files hold "
                                       f"{len(x)} images of {tuple(x.shape[1:])} and {len(y)} labels; expected as "
                                       f"many labels as images of {spec.shape}")
    return ImageData(spec, train_x.contiguous(), train_y, test_x.contiguous(), test_y)


def load_dataset(name: str, data_root: str = "", download: bool = True) -> ImageData:
    """Load a dataset, searching: `data_root`; the dataset's local copy (Debian's Fashion-MNIST); then torchvision.

    A `data_root` that is given but holds no dataset is an error (not a silent fallback), so a
    typo in a path is never hidden by another copy of the data.
    """
    if name not in DATASETS:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; known: {', '.join(DATASETS.choices())}")
    dataset = DATASETS[name]
    spec = dataset.spec
    if data_root:
        try:
            return _load_from(dataset, Path(data_root), download=False)
        except (RuntimeError, FileNotFoundError) as exc:
            raise DatasetNotFoundError(
                f"dataset {name!r} not found under data-root {data_root!r} ({exc}); {spec.how_to_get}") from None
    local = dataset.local_root()
    if local is not None:
        return _load_from(dataset, local, download=False)
    try:
        return _load_from(dataset, cache_root(), download=download)
    except (RuntimeError, OSError) as exc:
        raise DatasetNotFoundError(f"dataset {name!r} not found ({exc}); {spec.how_to_get}") from None
