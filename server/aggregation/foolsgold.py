"""FoolsGold (Fung et al., RAID 2020): clients whose update histories look alike are down-weighted
(`fl_defense.aggregation.foolsgold`); the per-client histories are the rule's state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.aggregation import Aggregate, State, foolsgold
from fl_defense.registry import AGGREGATION_RULES, positive
from fl_defense.server.aggregation.base import RobustRule


@AGGREGATION_RULES.register("foolsgold", options=[
    positive("foolsgold-confidence", 1.0, "FoolsGold: confidence kappa of the logit weighting"),
], summary="FoolsGold: per-client update histories; clients that look alike are down-weighted")
class FoolsGold(RobustRule):
    def __init__(self, cfg: Mapping[str, Any], **common: Any) -> None:
        super().__init__(cfg, **common)
        self.history: dict[int, torch.Tensor] = {}

    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return foolsgold(global_state, states, partitions, self.history, self.cfg["foolsgold-confidence"])

    def state_dict(self) -> dict[str, Any]:
        return {"history": dict(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {int(k): v for k, v in state["history"].items()}
