"""Backdoor attacks, selected by name from config: the trigger (`attack=`) and the attacker's training
(`attack-training=`); a new one is one new module."""

from fl_defense.attacks import (  # noqa: F401  (registration)
    badnets,
    blended,
    constrain_and_scale,
    dba,
    neurotoxin,
    pgd,
    sig,
    wanet,
)
from fl_defense.attacks.attacker import ATTACKER_TRAININGS, AttackerTraining, build_attacker_training
from fl_defense.attacks.base import ATTACKS, Attack, build_attack, evaluation_attack, register
from fl_defense.attacks.malicious import attacks_in_round, craft_update, malicious_clients, malicious_rank
from fl_defense.attacks.poisoned_data import PoisonedData, poison_data
from fl_defense.attacks.trigger import Stamp, Trigger, TriggerError, load_image_file, named_pattern, square_mask

__all__ = [
    "ATTACKER_TRAININGS", "ATTACKS", "Attack", "AttackerTraining", "PoisonedData", "Stamp", "Trigger", "TriggerError",
    "attacks_in_round", "build_attack", "build_attacker_training", "craft_update", "evaluation_attack",
    "load_image_file", "malicious_clients", "malicious_rank", "named_pattern", "poison_data", "register",
    "square_mask",
]
