"""FedAvg (McMahan et al. 2017): the example-weighted mean of the updates; Flower's strategy."""

from fl_defense.server.aggregation.base import flower_rule
from flwr.serverapp.strategy import FedAvg

FedAvgRule = flower_rule("fedavg", FedAvg, "FedAvg (McMahan et al. 2017): the example-weighted mean; Flower's")
