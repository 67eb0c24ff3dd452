"""What makes a client malicious beyond its poisoned data: who, when, and how its update is crafted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from fl_defense.config import schedule_rounds


def malicious_clients(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids of the malicious clients: round(fraction * n) of them, seeded, fixed for the run."""
    k = int(round(fraction * num_clients))
    perm = np.random.default_rng([seed, 3]).permutation(num_clients)
    return frozenset(int(i) for i in perm[:k])


def malicious_rank(partition_id: int, malicious: frozenset[int]) -> int:
    """A malicious client's 0-based rank among the malicious ones (by partition id): which share of a
    distributed trigger it plants."""
    return sorted(malicious).index(partition_id)


def attacks_in_round(schedule: str, server_round: int) -> bool:
    """Whether malicious clients attack in this (1-based) round under an attack-schedule spec."""
    return server_round in schedule_rounds(schedule, server_round)


def ground_truth(cfg: Mapping[str, Any], partitions: Iterable[int], server_round: int) -> tuple[list[int], list[int]]:
    """Which of these partitions are malicious, and which of those attack (or, under poisoned-data, train on
    their poisoned data) in this round: from the config and seed alone. In the threat model the clients are the
    adversary, so nothing a client says about itself counts as evidence."""
    evil = malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])
    malicious = sorted(p for p in partitions if p in evil)
    attacking = cfg["attack"] != "none" and (cfg["threat"] == "poisoned-data"
                                             or attacks_in_round(cfg["attack-schedule"], server_round))
    return malicious, malicious if attacking else []


def craft_update(local: dict[str, torch.Tensor], global_: dict[str, torch.Tensor], trainable: set[str],
                 boost: float, norm_bound: float) -> dict[str, torch.Tensor]:
    """Scale the trainable part of an update by `boost` (model replacement), then bound its L2 norm.

    Only trainable parameters are scaled: scaling BatchNorm running variances could make them
    negative. The norm is taken over the same parameters after scaling.
    """
    if boost == 1.0 and norm_bound <= 0:
        return local
    delta = {k: (local[k] - global_[k]) * boost for k in trainable}
    if norm_bound > 0:
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values()))
        if norm > norm_bound:
            delta = {k: d * (norm_bound / norm).to(d.dtype) for k, d in delta.items()}
    return {k: (global_[k] + delta[k] if k in delta else v) for k, v in local.items()}
