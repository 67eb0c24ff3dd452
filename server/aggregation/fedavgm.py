"""FedAvgM (Hsu et al. 2019): FedAvg with server momentum; Flower's strategy, whose model copy and momentum are
the rule's state.

Flower's FedAvgM defaults to momentum 0 and server learning rate 1, which is FedAvg itself (this project's
`fedavgm` was exactly that until the keys below existed). Hsu et al. find that what matters is the effective
learning rate eta / (1 - beta); the defaults, momentum 0.9 with server learning rate 0.1, keep it at 1, FedAvg's
step, and add the momentum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvgM

from fl_defense.registry import AGGREGATION_RULES, between, positive
from fl_defense.server.aggregation.base import Rule


@AGGREGATION_RULES.register("fedavgm", options=[
    between("fedavgm-momentum", 0.9, "FedAvgM: server momentum beta", 0, 1, "[)"),
    positive("fedavgm-lr", 0.1, "FedAvgM: server learning rate eta (eta / (1 - beta) = 1: FedAvg's step size)"),
], summary="FedAvgM (Hsu et al. 2019): FedAvg with server momentum; Flower's")
class FedAvgMRule(Rule, FedAvgM):
    def __init__(self, cfg: Mapping[str, Any], **common: Any) -> None:
        super().__init__(**common, server_momentum=cfg["fedavgm-momentum"], server_learning_rate=cfg["fedavgm-lr"])

    def state_dict(self) -> dict[str, Any]:
        momentum = self.momentum_vector
        return {"current": None if self.current_arrays is None else self.current_arrays.to_torch_state_dict(),
                "momentum": None if momentum is None else [torch.from_numpy(np.array(v)) for v in momentum]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        current, momentum = state["current"], state["momentum"]
        self.current_arrays = None if current is None else ArrayRecord(current)
        self.momentum_vector = None if momentum is None else [v.numpy() for v in momentum]
