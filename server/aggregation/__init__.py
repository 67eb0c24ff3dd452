"""Aggregation rules by name (`aggregation=`), one module each: Flower's strategies where Flower has the rule,
and the literature's robust rules around the tensor functions of `fl_defense.aggregation`."""

from fl_defense.server.aggregation.base import (
    WEIGHT_KEY, RobustRule, Rule, SelectionRecorder, TrainableOnly, build_aggregator, flower_rule, partition_id,
    round_seed, trainable_names,
)

__all__ = ["RobustRule", "Rule", "SelectionRecorder", "TrainableOnly", "WEIGHT_KEY", "build_aggregator",
           "flower_rule", "partition_id", "round_seed", "trainable_names"]
