"""Coordinate-wise median (Yin et al. 2018); Flower's FedMedian."""

from fl_defense.server.aggregation.base import flower_rule
from flwr.serverapp.strategy import FedMedian

FedMedianRule = flower_rule("fedmedian", FedMedian, "coordinate-wise median (Yin et al. 2018); Flower's")
