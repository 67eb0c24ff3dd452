"""MNIST (LeCun et al. 1998): 70,000 grey 28x28 handwritten digits."""

from __future__ import annotations

from torchvision import datasets as tvd

from fl_defense.data.datasets import Dataset, DatasetSpec, mnist_like, register

MNIST = register(Dataset(
    DatasetSpec("mnist", 1, 28, 10, (0.1307,), (0.3081,),
                "set data-root to a torchvision root holding MNIST/raw/, or allow download=true with network access"),
    mnist_like(tvd.MNIST)), "MNIST: 70,000 grey 28x28 handwritten digits")
