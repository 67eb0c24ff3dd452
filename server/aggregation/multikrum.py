"""Multi-Krum (Blanchard et al. 2017): the mean of the n - f updates Krum scores best; Flower's strategy."""

from flwr.serverapp.strategy import MultiKrum

from fl_defense.config import expected_malicious
from fl_defense.server.aggregation.base import flower_rule

MultiKrumRule = flower_rule(
    "multikrum", MultiKrum, "Multi-Krum (Blanchard et al. 2017): averages the n - f updates Krum scores best; Flower's",
    kwargs=lambda cfg: {"num_malicious_nodes": expected_malicious(cfg),
                        "num_nodes_to_select": max(1, cfg["clients-per-round"] - expected_malicious(cfg))})
