"""Krum (Blanchard et al. 2017): the one update closest to its n - f - 2 neighbours; Flower's strategy."""

from flwr.serverapp.strategy import Krum

from fl_defense.config import expected_malicious
from fl_defense.server.aggregation.base import flower_rule

KrumRule = flower_rule("krum", Krum, "Krum (Blanchard et al. 2017): keeps the one update closest to its neighbours, "
                       "tolerating round(malicious-fraction x clients-per-round) attackers; Flower's",
                       kwargs=lambda cfg: {"num_malicious_nodes": expected_malicious(cfg)})
