"""Seeded splits of a training set: the server's clean hold-out, then IID or Dirichlet client shards.

Every split is a list of index arrays into the one shared training tensor; nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FederatedSplit:
    """Indices of the server's clean held-out set and of each client's shard (all disjoint)."""

    clean: np.ndarray
    clients: list[np.ndarray]


def hold_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split range(n) into (held-out, rest) with round(fraction*n) held out, at least one on each side."""
    if not 0 < fraction < 1:
        raise ValueError(f"clean fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng([seed, 0]).permutation(n)
    k = min(max(int(round(fraction * n)), 1), n - 1)
    return np.sort(perm[:k]), np.sort(perm[k:])


def iid(indices: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into `num_clients` shards whose sizes differ by at most one."""
    if num_clients > len(indices):
        raise ValueError(f"{num_clients} clients but only {len(indices)} training samples")
    perm = np.random.default_rng([seed, 1]).permutation(indices)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet(indices: np.ndarray, labels: np.ndarray, num_clients: int, alpha: float, seed: int,
              min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
    """Label-skewed shards: each class is spread over clients by proportions drawn from Dir(alpha).

    Draws are repeated (seeded) until every client holds at least `min_size` samples, as in the
    usual FL benchmark code; a setting that cannot reach that raises instead of looping forever.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng([seed, 2])
    labels_here = labels[indices]
    classes = np.unique(labels_here)
    for _ in range(max_tries):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            members = rng.permutation(indices[labels_here == c])
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(members)).astype(int)[:-1]
            for client, part in enumerate(np.split(members, cuts)):
                shards[client].append(part)
        out = [np.sort(np.concatenate(parts)) for parts in shards]
        if min(len(s) for s in out) >= min_size:
            return out
    raise ValueError(f"Dirichlet(alpha={alpha}) left a client with fewer than {min_size} samples in "
                     f"{max_tries} draws; raise alpha or lower num-clients")


def federated_split(labels: np.ndarray, num_clients: int, clean_fraction: float, partition: str,
                    alpha: float, seed: int, train_fraction: float = 1.0) -> FederatedSplit:
    """Hold out the server's clean set first, then partition (a seeded share of) the rest among the clients."""
    clean, rest = hold_out(len(labels), clean_fraction, seed)
    if train_fraction < 1:
        keep = max(num_clients, int(round(train_fraction * len(rest))))
        rest = np.sort(np.random.default_rng([seed, 4]).choice(rest, size=keep, replace=False))
    if partition == "iid":
        clients = iid(rest, num_clients, seed)
    elif partition == "dirichlet":
        clients = dirichlet(rest, labels, num_clients, alpha, seed)
    else:
        raise ValueError(f"unknown partition {partition!r}; allowed: iid, dirichlet")
    return FederatedSplit(clean=clean, clients=clients)
