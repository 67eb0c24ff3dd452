"""Backdoor attacks, selected by name from config: the trigger (`attack=`) and the attacker's training
(`attack-training=`); each is one module of this package that registers itself."""

from fl_defense.attacks.attacker import AttackerTraining, build_attacker_training
from fl_defense.attacks.base import Attack, build_attack, evaluation_attack
from fl_defense.attacks.malicious import attacks_in_round, craft_update, ground_truth, malicious_clients, malicious_rank
from fl_defense.attacks.poisoned_data import PoisonedData, poison_data
from fl_defense.attacks.trigger import Stamp, Trigger, TriggerError, load_image_file, named_pattern, square_mask

__all__ = [
    "Attack", "AttackerTraining", "PoisonedData", "Stamp", "Trigger", "TriggerError", "attacks_in_round",
    "build_attack", "build_attacker_training", "craft_update", "evaluation_attack", "ground_truth",
    "load_image_file", "malicious_clients", "malicious_rank", "named_pattern", "poison_data", "square_mask",
]
