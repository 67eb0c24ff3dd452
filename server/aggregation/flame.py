"""FLAME (Nguyen et al., USENIX Security 2022): the majority cluster of update directions, clipped to the median
norm, with noise (`fl_defense.aggregation.flame`)."""

from __future__ import annotations

import torch

from fl_defense.aggregation import Aggregate, State, flame
from fl_defense.registry import AGGREGATION_RULES, non_negative
from fl_defense.server.aggregation.base import RobustRule


@AGGREGATION_RULES.register("flame", options=[
    non_negative("flame-noise", 0.001, "FLAME: noise level lambda; the noise std is lambda times the clipping bound"),
], summary="FLAME: HDBSCAN on cosine distances keeps the majority cluster, clip to the median norm, noise")
class Flame(RobustRule):
    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return flame(global_state, states, self.cfg["flame-noise"], generator)
