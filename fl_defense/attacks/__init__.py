"""Backdoor attacks, selected by name from config (`attack=`); a new one is one new module."""

from fl_defense.attacks import badnets, blended  # noqa: F401  (registration)
from fl_defense.attacks.base import ATTACKS, Attack, build_attack, evaluation_attack, register
from fl_defense.attacks.malicious import attacks_in_round, craft_update, malicious_clients
from fl_defense.attacks.poisoned_data import PoisonedData, poison_data
from fl_defense.attacks.trigger import Trigger, TriggerError, load_image_file, named_pattern, square_mask

__all__ = [
    "ATTACKS", "Attack", "PoisonedData", "Trigger", "TriggerError", "attacks_in_round", "build_attack",
    "craft_update", "evaluation_attack", "load_image_file", "malicious_clients", "named_pattern", "poison_data",
    "register", "square_mask",
]
