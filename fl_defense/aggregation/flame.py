"""FLAME (Nguyen et al., USENIX Security 2022): cluster out odd updates, clip to the median norm, add noise.

1. HDBSCAN on the pairwise cosine distances of the updates, with min_cluster_size = n/2 + 1, so at most
   one cluster can form: the majority, which is admitted; everyone else is excluded. The paper clusters
   the local models; their cosine distances are dominated by the shared global model, so the updates
   (model minus global) are clustered here.
2. The clipping bound is the median L2 norm of all n updates; each admitted update is scaled down to it.
3. The admitted, clipped updates are averaged uniformly (as in the paper: a reported example count is
   the attacker's to choose) and Gaussian noise with std = noise_level * bound is added.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fl_defense.aggregation.base import (
    Aggregate, apply_update, clip_factors, cosine_similarities, flat_updates, indices, median,
)


def majority_cluster(distances: np.ndarray) -> list[int]:
    """Indices in the largest HDBSCAN cluster of a precomputed distance matrix (all of them if none forms).

    min_samples=1 and allow_single_cluster=True as in the authors' setting: with a benign majority the
    expected outcome is exactly one cluster, which HDBSCAN would otherwise refuse to report.
    """
    from sklearn.cluster import HDBSCAN  # here, not at module level: importing it costs about a second

    n = len(distances)
    if n < 2:  # HDBSCAN needs min_cluster_size >= 2; a lone update is its own majority
        return list(range(n))
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed",
                     allow_single_cluster=True, copy=True).fit(distances).labels_
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return list(range(n))
    biggest = np.bincount(clustered).argmax()
    return [i for i in range(n) if labels[i] == biggest]


def cosine_distances(updates: torch.Tensor) -> np.ndarray:
    """1 - cosine similarity, symmetric with a zero diagonal, as HDBSCAN's precomputed metric wants it."""
    d = (1.0 - cosine_similarities(updates)).clamp_min(0.0).numpy()
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def flame(global_state: Mapping[str, torch.Tensor], states: Sequence[Mapping[str, torch.Tensor]],
          noise_level: float, generator: torch.Generator) -> Aggregate:
    """FLAME over the keys of `global_state` (pass the trainable parameters)."""
    updates = flat_updates(global_state, states)
    admitted = majority_cluster(cosine_distances(updates))
    norms = updates.norm(dim=1)
    bound = median(norms)
    factors = clip_factors(norms, bound)
    mean = (updates[admitted] * factors[admitted, None]).mean(dim=0)
    noise_std = noise_level * bound
    noise = torch.randn(mean.shape, generator=generator) * noise_std
    excluded = torch.ones(len(states), dtype=torch.bool)
    excluded[admitted] = False
    clipped = ~excluded & (factors < 1)
    return Aggregate(apply_update(global_state, mean + noise), {
        "excluded": indices(excluded), "clipped": indices(clipped), "clip_bound": bound, "noise_std": noise_std,
    })
