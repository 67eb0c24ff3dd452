"""Robust learning rate (Ozdayi et al., AAAI 2021): go against the mean update where clients disagree.

Per coordinate, the signs of the client updates are summed; where |sum| < threshold the server learning
rate is negated for that coordinate. A backdoor needs coordinates that honest clients do not push, and
there the few malicious signs do not reach the threshold, so the backdoor direction is undone. The
update applied is the example-weighted mean (as in the authors' code), times +-1 per coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fl_defense.aggregation.base import Aggregate, apply_update, flat_updates


def default_threshold(expected_malicious: int) -> int:
    """The threshold used when none is given: twice the expected malicious clients per round, at least 1."""
    return max(1, 2 * expected_malicious)


def rlr(global_state: Mapping[str, torch.Tensor], states: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float], threshold: int) -> Aggregate:
    """RLR over the keys of `global_state` with server learning rate 1."""
    updates = flat_updates(global_state, states)
    agreement = torch.sign(updates).sum(dim=0).abs()
    lr = torch.where(agreement < threshold, -1.0, 1.0)
    w = torch.tensor(weights, dtype=torch.float32)
    mean = (w[:, None] * updates).sum(dim=0) / w.sum()
    return Aggregate(apply_update(global_state, lr * mean), {
        "threshold": threshold, "flipped_fraction": float((lr < 0).float().mean()),
    })
