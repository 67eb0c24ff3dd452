"""Robust aggregation rules of the literature as functions of tensors (no Flower; server/aggregation.py wires them).

Each rule takes the global state and the clients' states (the trainable parameters), and returns an
`Aggregate`: the new state and an info dict of what it decided, clients named by their list index.
"""

from fl_defense.aggregation.base import Aggregate, State, average_states, split_state
from fl_defense.aggregation.flame import flame
from fl_defense.aggregation.foolsgold import foolsgold, foolsgold_weights
from fl_defense.aggregation.normclip import normclip
from fl_defense.aggregation.rlr import default_threshold, rlr

__all__ = ["Aggregate", "State", "average_states", "default_threshold", "flame", "foolsgold", "foolsgold_weights",
           "normclip", "rlr", "split_state"]
