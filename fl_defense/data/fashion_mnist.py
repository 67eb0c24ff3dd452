"""Fashion-MNIST (Xiao et al. 2017): 70,000 grey 28x28 images of 10 clothing classes, the default dataset.

Offline, it comes from the Debian package `dataset-fashion-mnist`, whose re-compressed files are gunzipped
into a torchvision `raw/` folder once.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from torchvision import datasets as tvd

from fl_defense.data.datasets import Dataset, DatasetSpec, cache_root, mnist_like, register

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def prepare_debian_fashion_mnist(source: Path = DEBIAN_FASHION_MNIST, root: Path | None = None) -> Path | None:
    """Gunzip the Debian package's Fashion-MNIST into a torchvision root; None when it is absent.

    The package re-compresses the files, so their .gz bytes differ from the originals and torchvision's
    md5 check would reject them: they are decompressed, never copied.
    """
    if not all((source / f"{name}.gz").is_file() for name in FILES):
        return None
    root = root or cache_root()
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = raw / name
        if target.is_file():
            continue
        tmp = raw / f".{name}.tmp"
        with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return root


FASHION_MNIST = register(Dataset(
    DatasetSpec("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,),
                "install the Debian package (apt-get install -y dataset-fashion-mnist), set data-root to a "
                "torchvision root holding FashionMNIST/raw/, or allow download=true with network access"),
    mnist_like(tvd.FashionMNIST), local_root=prepare_debian_fashion_mnist),
    "Fashion-MNIST: 70,000 grey 28x28 clothing images, 10 classes (offline from Debian's dataset-fashion-mnist)")
