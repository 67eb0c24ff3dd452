"""Aggregation rules by name: Flower's own strategies, configured from the run config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy


def _expected_malicious(cfg: Mapping[str, Any]) -> int:
    """Malicious clients expected among the sampled ones: what Krum-style rules are told to tolerate."""
    return int(round(cfg["malicious-fraction"] * cfg["clients-per-round"]))


AGGREGATORS: dict[str, Callable[[Mapping[str, Any], dict[str, Any]], Strategy]] = {
    "fedavg": lambda cfg, kw: FedAvg(**kw),
    "fedavgm": lambda cfg, kw: FedAvgM(**kw),
    "fedmedian": lambda cfg, kw: FedMedian(**kw),
    "fedtrimmedavg": lambda cfg, kw: FedTrimmedAvg(**kw, beta=0.2),
    "krum": lambda cfg, kw: Krum(**kw, num_malicious_nodes=_expected_malicious(cfg)),
    "multikrum": lambda cfg, kw: MultiKrum(
        **kw, num_malicious_nodes=_expected_malicious(cfg),
        num_nodes_to_select=max(1, cfg["clients-per-round"] - _expected_malicious(cfg))),
}


def build_aggregator(cfg: Mapping[str, Any]) -> Strategy:
    """The configured Flower strategy, sampling `clients-per-round` of `num-clients`, no client-side eval."""
    common = {
        "fraction_train": cfg["clients-per-round"] / cfg["num-clients"],
        "min_train_nodes": cfg["clients-per-round"],
        "min_available_nodes": cfg["num-clients"],
        "fraction_evaluate": 0.0,
    }
    return AGGREGATORS[cfg["aggregation"]](cfg, common)
