"""Norm clipping with weak differential privacy (Sun et al. 2019, "Can you really backdoor federated learning?").

A boosted backdoor update needs a large norm to survive averaging: each update is scaled down to at most
`bound` (0: the median update norm of the round), the clipped updates are averaged uniformly, and
Gaussian noise with std `noise_std` is added to the aggregate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl_defense.aggregation.base import Aggregate, apply_update, clip_factors, flat_updates, indices, median


def normclip(global_state: Mapping[str, torch.Tensor], states: Sequence[Mapping[str, torch.Tensor]],
             bound: float, noise_std: float, generator: torch.Generator) -> Aggregate:
    """Norm clipping + weak DP over the keys of `global_state`."""
    updates = flat_updates(global_state, states)
    norms = updates.norm(dim=1)
    bound = bound or median(norms)
    factors = clip_factors(norms, bound)
    mean = (updates * factors[:, None]).mean(dim=0)
    noise = torch.randn(mean.shape, generator=generator) * noise_std
    return Aggregate(apply_update(global_state, mean + noise), {
        "clip_bound": bound, "clipped": indices(factors < 1), "noise_std": noise_std,
    })
