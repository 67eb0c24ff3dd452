"""Norm clipping with weak DP (Sun et al. 2019): every update clipped to `clip-norm` (0: the round's median norm),
averaged, with Gaussian noise (`fl_defense.aggregation.normclip`)."""

from __future__ import annotations

import torch

from fl_defense.aggregation import Aggregate, State, normclip
from fl_defense.registry import AGGREGATION_RULES, non_negative
from fl_defense.server.aggregation.base import RobustRule


@AGGREGATION_RULES.register("normclip", options=[
    non_negative("normclip-noise", 0.001, "normclip: std of the weak-DP Gaussian noise added to the aggregate "
                 "(Sun et al. 2019)"),
], summary="norm clipping (to clip-norm, 0: the round's median norm) with weak DP noise")
class NormClip(RobustRule):
    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return normclip(global_state, states, self.cfg["clip-norm"], self.cfg["normclip-noise"], generator)
