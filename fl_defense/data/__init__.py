"""Datasets (torchvision-backed, uint8 in memory, one module each) and seeded federated partitions."""

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from fl_defense.data.datasets import (
    DatasetNotFoundError, DatasetSpec, ImageData, cache_root, dataset_spec, load_dataset, to_float,
)
from fl_defense.data.partition import FederatedSplit, dirichlet, federated_split, hold_out, iid


@lru_cache(maxsize=2)
def cached_dataset(name: str, data_root: str, download: bool) -> ImageData:
    """`load_dataset` once per process: client actors are reused across rounds and clients."""
    return load_dataset(name, data_root, download)


@lru_cache(maxsize=4)
def cached_split(name: str, data_root: str, download: bool, num_clients: int, clean_fraction: float,
                 partition: str, alpha: float, seed: int, train_fraction: float) -> FederatedSplit:
    """The run's federated split, computed once per process from the seed (server and clients agree)."""
    labels = cached_dataset(name, data_root, download).train_y.numpy()
    return federated_split(labels, num_clients, clean_fraction, partition, alpha, seed, train_fraction)


def split_for(cfg: Mapping[str, Any]) -> FederatedSplit:
    """The run's federated split from its config keys, the same on every process for the same config."""
    return cached_split(cfg["dataset"], cfg["data-root"], cfg["download"], cfg["num-clients"],
                        cfg["clean-fraction"], cfg["partition"], cfg["alpha"], cfg["seed"], cfg["train-fraction"])


def data_for(cfg: Mapping[str, Any]) -> ImageData:
    """The run's dataset, loaded once per process."""
    return cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])


__all__ = [
    "DatasetNotFoundError", "DatasetSpec", "FederatedSplit", "ImageData", "cache_root", "cached_dataset",
    "cached_split", "data_for", "dataset_spec", "dirichlet", "federated_split", "hold_out", "iid", "load_dataset",
    "split_for", "to_float",
]
