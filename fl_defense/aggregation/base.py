"""What the robust aggregation rules share: flat update vectors, norms, similarities, buffer averaging.

A state is a name -> tensor mapping (a state_dict or a part of one). The rules read a client's update
(its state minus the global one) as one vector over the trainable parameters: BatchNorm statistics and
counters are not directions in weight space, so `split_state` sets them apart and `average_states`
averages them as FedAvg does, integer counters staying integers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

State = dict[str, torch.Tensor]


@dataclass
class Aggregate:
    """A rule's new global state and what it decided (clients by their index in the input list)."""

    state: State
    info: dict[str, Any] = field(default_factory=dict)


def split_state(state: Mapping[str, torch.Tensor], trainable: Collection[str]) -> tuple[State, State]:
    """(trainable parameters, everything else), each in the state's key order."""
    params = {k: v for k, v in state.items() if k in trainable}
    rest = {k: v for k, v in state.items() if k not in trainable}
    return params, rest


def average_states(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """Weighted mean per key in float64; integer tensors (num_batches_tracked) are rounded back to their dtype."""
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    out: State = {}
    for key, first in states[0].items():
        mean = sum(wi * s[key].to(torch.float64) for wi, s in zip(w, states))
        out[key] = (mean.round() if not first.is_floating_point() else mean).to(first.dtype)
    return out


def flat_updates(global_state: Mapping[str, torch.Tensor],
                 states: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The clients' updates as rows of an (n, d) float32 matrix, keys in the global state's order."""
    return torch.stack([
        torch.cat([(s[k].float() - g.float()).reshape(-1) for k, g in global_state.items()]) for s in states
    ])


def apply_update(global_state: Mapping[str, torch.Tensor], update: torch.Tensor) -> State:
    """The global state moved by a flat update vector, each tensor in its own shape and dtype."""
    out: State = {}
    offset = 0
    for key, g in global_state.items():
        n = g.numel()
        out[key] = (g.float() + update[offset:offset + n].reshape(g.shape)).to(g.dtype)
        offset += n
    return out


def median(values: torch.Tensor) -> float:
    """The statistical median (mean of the two middle values for an even count; torch.median takes the lower)."""
    return float(torch.quantile(values.double(), 0.5))


def clip_factors(norms: torch.Tensor, bound: float) -> torch.Tensor:
    """min(1, bound / norm) per update: the scale that brings each norm down to the bound, zero norms untouched."""
    return torch.clamp(bound / norms.double().clamp_min(torch.finfo(torch.float64).tiny), max=1.0).float()


def cosine_similarities(vectors: torch.Tensor) -> torch.Tensor:
    """(n, n) cosine similarities of the rows, in float64; a zero row is orthogonal to everything."""
    v = vectors.double()
    unit = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def indices(mask: torch.Tensor) -> list[int]:
    """Positions where a boolean mask is true, as plain ints (for info dicts that end up in JSON)."""
    return [int(i) for i in torch.nonzero(mask).reshape(-1)]
