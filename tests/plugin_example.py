"""Three throw-away methods registered from outside the package, as a contributor's own module would
(`plugins=plugin_example`): an attack, an aggregation rule with state, and a purifier. Each is only what one
new file needs; tests/test_plugins.py runs them through config checking, a simulation and a resume."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from fl_defense.aggregation import Aggregate, State, average_states
from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import square_mask
from fl_defense.errors import ConfigError
from fl_defense.models import BackdoorModel
from fl_defense.purification.base import CleanSet, CleanSetPurifier, trainable_copy
from fl_defense.registry import AGGREGATION_RULES, ATTACKS, PURIFIERS, between, positive
from fl_defense.server.aggregation import RobustRule


@ATTACKS.register("toy-corner", options=[positive("toy-corner-size", 3, "toy-corner: side of the white patch")],
                  summary="a white square in the top-left corner (a test's throw-away attack)")
class ToyCorner(Attack):
    default_pattern = "white"

    def default_mask(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> torch.Tensor:
        return square_mask(shape, cfg["toy-corner-size"], "top-left")


def _check_decay(cfg: Mapping[str, Any]) -> None:
    if cfg["toy-decay"] * cfg["rounds"] >= 1:
        raise ConfigError(f"config key 'toy-decay': {cfg['toy-decay']} x {cfg['rounds']} rounds reaches a step of 0")


@AGGREGATION_RULES.register("toy-decay", options=[
    between("toy-decay", 0.1, "toy-decay: the server step shrinks by this share of FedAvg's per round seen", 0, 1, "[)"),
], checks=[_check_decay], summary="FedAvg with a server step that shrinks with every round (a test's throw-away "
                                  "rule)")
class ToyDecay(RobustRule):
    def __init__(self, cfg: Mapping[str, Any], **common: Any) -> None:
        super().__init__(cfg, **common)
        self.rounds_seen = 0

    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        step = 1.0 - self.cfg["toy-decay"] * self.rounds_seen
        self.rounds_seen += 1
        mean = average_states(states, weights)
        return Aggregate({k: g + step * (mean[k] - g) for k, g in global_state.items()}, {"step": step})

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_seen": self.rounds_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rounds_seen = int(state["rounds_seen"])


@PURIFIERS.register("toy-head", options=[positive("toy-head-lr", 0.05, "toy-head: SGD learning rate of the head")],
                    summary="one epoch of SGD on the last layer only (a test's throw-away purifier)")
class ToyHead(CleanSetPurifier):
    def purify(self, model: BackdoorModel, clean: CleanSet, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        student = trainable_copy(model, device)
        opt = torch.optim.SGD(student.head.parameters(), lr=self.cfg["toy-head-lr"])
        for idx in clean.batches(64, generator):
            loss = F.cross_entropy(student(clean.x[idx].to(device)), clean.y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return student.eval()
