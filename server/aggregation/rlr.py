"""Robust learning rate (Ozdayi et al., AAAI 2021): the server step is negated on coordinates where too few clients
agree in sign (`fl_defense.aggregation.rlr`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.aggregation import Aggregate, State, default_threshold, rlr
from fl_defense.config import expected_malicious
from fl_defense.errors import ConfigError
from fl_defense.registry import AGGREGATION_RULES, non_negative
from fl_defense.server.aggregation.base import RobustRule


def threshold(cfg: Mapping[str, Any]) -> int:
    """`rlr-threshold`, or twice the expected malicious clients per round when it is 0."""
    return int(cfg["rlr-threshold"] or default_threshold(expected_malicious(cfg)))


def _check_threshold(cfg: Mapping[str, Any]) -> None:
    n = cfg["clients-per-round"]
    if threshold(cfg) > n:
        source = "" if cfg["rlr-threshold"] else f" (0: twice the {expected_malicious(cfg)} expected malicious)"
        raise ConfigError(f"config key 'rlr-threshold': {threshold(cfg)}{source} is more than the {n} clients per "
                          f"round, so every coordinate's learning rate would be flipped; allowed: 0..{n}")


@AGGREGATION_RULES.register("rlr", options=[
    non_negative("rlr-threshold", 0, "RLR: sign agreement below which a coordinate's learning rate is flipped; 0: "
                 "twice the expected malicious clients per round, at least 1"),
], checks=[_check_threshold], summary="robust learning rate: the server step is negated where too few clients agree "
                                      "in sign")
class RobustLearningRate(RobustRule):
    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return rlr(global_state, states, weights, threshold(self.cfg))
