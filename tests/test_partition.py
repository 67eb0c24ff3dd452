"""Federated splits: the clean hold-out and the client shards are disjoint, seeded, and as skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest

from fl_defense.data import (
    DatasetNotFoundError,
    FederatedSplit,
    dirichlet,
    federated_split,
    hold_out,
    iid,
    load_dataset,
)


def balanced_labels(num_classes: int = 10, per_class: int = 300, seed: int = 0) -> np.ndarray:
    """Shuffled labels with exactly `per_class` samples of each class."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def all_parts(split: FederatedSplit) -> list[np.ndarray]:
    """The clean set followed by every client shard."""
    return [split.clean, *split.clients]


def assert_disjoint(parts: list[np.ndarray]) -> None:
    """No index appears twice, within a part or across parts."""
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)


def label_entropy(labels: np.ndarray, num_classes: int) -> float:
    """Shannon entropy (nats) of a shard's label distribution."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mean_client_entropy(labels: np.ndarray, shards: list[np.ndarray], num_classes: int = 10) -> float:
    """Mean over clients of the entropy of their label distribution."""
    return float(np.mean([label_entropy(labels[s], num_classes) for s in shards]))


# ---- hold_out ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fraction"), [(1000, 0.05), (60000, 0.05), (101, 0.3), (7, 0.5)])
def test_hold_out_sizes_disjoint_and_covering(n: int, fraction: float) -> None:
    clean, rest = hold_out(n, fraction, seed=3)
    assert len(clean) == round(fraction * n)
    assert_disjoint([clean, rest])
    assert np.array_equal(np.sort(np.concatenate([clean, rest])), np.arange(n))


def test_hold_out_keeps_at_least_one_on_each_side() -> None:
    clean, rest = hold_out(10, 0.01, seed=0)
    assert (len(clean), len(rest)) == (1, 9)
    clean, rest = hold_out(10, 0.99, seed=0)
    assert (len(clean), len(rest)) == (9, 1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_hold_out_rejects_fraction_outside_open_unit_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match="clean fraction"):
        hold_out(100, fraction, seed=0)


def test_hold_out_is_seeded() -> None:
    a, _ = hold_out(1000, 0.1, seed=1)
    b, _ = hold_out(1000, 0.1, seed=1)
    c, _ = hold_out(1000, 0.1, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# ---- iid -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "clients"), [(1000, 10), (1003, 10), (17, 5), (5, 5)])
def test_iid_shards_cover_disjointly_with_sizes_within_one(n: int, clients: int) -> None:
    indices = np.arange(100, 100 + n)  # not starting at 0: shards must hold the given indices, not positions
    shards = iid(indices, clients, seed=0)
    assert len(shards) == clients
    assert_disjoint(shards)
    assert np.array_equal(np.sort(np.concatenate(shards)), indices)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_iid_more_clients_than_samples_raises() -> None:
    with pytest.raises(ValueError, match="clients"):
        iid(np.arange(3), 4, seed=0)


# ---- dirichlet -------------------------------------------------------------------------------------------


def test_dirichlet_shards_cover_disjointly() -> None:
    labels = balanced_labels()
    indices = np.arange(len(labels))
    shards = dirichlet(indices, labels, num_clients=8, alpha=0.5, seed=0)
    assert len(shards) == 8
    assert_disjoint(shards)
    assert np.array_equal(np.sort(np.concatenate(shards)), indices)
    assert min(len(s) for s in shards) >= 1


def test_dirichlet_label_skew_falls_with_alpha() -> None:
    """alpha=0.1 gives clients few classes each; alpha=100 and IID give all ten, near-uniformly."""
    labels = balanced_labels(per_class=500)
    indices = np.arange(len(labels))
    skewed = mean_client_entropy(labels, dirichlet(indices, labels, 10, alpha=0.1, seed=0))
    flat = mean_client_entropy(labels, dirichlet(indices, labels, 10, alpha=100.0, seed=0))
    uniform = mean_client_entropy(labels, iid(indices, 10, seed=0))
    assert uniform > 0.97 * np.log(10)
    assert flat > 0.95 * np.log(10)
    assert skewed < 0.6 * uniform
    assert skewed < 0.6 * flat


def test_dirichlet_impossible_min_size_raises() -> None:
    labels = balanced_labels(num_classes=10, per_class=6)  # 60 samples
    with pytest.raises(ValueError, match="fewer than 10 samples"):
        dirichlet(np.arange(60), labels, num_clients=50, alpha=0.5, seed=0, min_size=10)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_rejects_non_positive_alpha(alpha: float) -> None:
    labels = balanced_labels()
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(np.arange(len(labels)), labels, 4, alpha=alpha, seed=0)


# ---- federated_split -------------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_federated_split_is_disjoint_and_covers_all(partition: str) -> None:
    labels = balanced_labels()
    split = federated_split(labels, num_clients=6, clean_fraction=0.1, partition=partition, alpha=0.5, seed=0)
    assert len(split.clients) == 6
    assert len(split.clean) == round(0.1 * len(labels))
    assert_disjoint(all_parts(split))
    assert np.array_equal(np.sort(np.concatenate(all_parts(split))), np.arange(len(labels)))


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_federated_split_is_seeded(partition: str) -> None:
    labels = balanced_labels()

    def split(seed: int) -> FederatedSplit:
        return federated_split(labels, 5, 0.05, partition, alpha=0.5, seed=seed)

    a, b, c = split(7), split(7), split(8)
    assert all(np.array_equal(x, y) for x, y in zip(all_parts(a), all_parts(b), strict=True))
    assert not np.array_equal(a.clean, c.clean)
    assert any(not np.array_equal(x, y) for x, y in zip(a.clients, c.clients, strict=True))


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_federated_split_train_fraction(partition: str) -> None:
    labels = balanced_labels()
    n, clean_fraction, train_fraction = len(labels), 0.05, 0.2
    split = federated_split(labels, 4, clean_fraction, partition, alpha=1.0, seed=0, train_fraction=train_fraction)
    rest = n - round(clean_fraction * n)
    assert len(split.clean) == round(clean_fraction * n)
    assert sum(len(s) for s in split.clients) == round(train_fraction * rest)
    assert_disjoint(all_parts(split))


def test_federated_split_train_fraction_keeps_one_sample_per_client() -> None:
    labels = balanced_labels(per_class=10)  # 100 samples
    split = federated_split(labels, 8, 0.1, "iid", alpha=1.0, seed=0, train_fraction=0.01)
    assert [len(s) for s in split.clients] == [1] * 8
    assert_disjoint(all_parts(split))


def test_federated_split_unknown_partition_raises() -> None:
    with pytest.raises(ValueError, match="unknown partition"):
        federated_split(balanced_labels(), 4, 0.05, "shards", alpha=0.5, seed=0)


def test_federated_split_on_real_fashion_mnist_labels() -> None:
    """The real 60k Fashion-MNIST labels: default split sizes, disjointness, and Dirichlet skew."""
    try:
        data = load_dataset("fashion-mnist", download=False)
    except DatasetNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    labels = data.train_y.numpy()
    assert len(labels) == 60000
    for partition in ("iid", "dirichlet"):
        split = federated_split(labels, 10, 0.05, partition, alpha=0.1, seed=0)
        assert len(split.clean) == 3000
        assert_disjoint(all_parts(split))
        assert sum(len(s) for s in split.clients) == 57000
        entropy = mean_client_entropy(labels, split.clients)
        if partition == "iid":
            assert entropy > 0.99 * np.log(10)
        else:
            assert entropy < 0.6 * np.log(10)
