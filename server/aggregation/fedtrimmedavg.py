"""Coordinate-wise trimmed mean (Yin et al. 2018), 20% cut at each end; Flower's FedTrimmedAvg."""

from fl_defense.server.aggregation.base import flower_rule
from flwr.serverapp.strategy import FedTrimmedAvg

FedTrimmedAvgRule = flower_rule("fedtrimmedavg", FedTrimmedAvg, "coordinate-wise trimmed mean, beta 0.2 (Yin et al. "
                                "2018); Flower's", kwargs=lambda cfg: {"beta": 0.2})
