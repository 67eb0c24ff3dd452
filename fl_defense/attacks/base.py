"""Attack interface and registry: an attack turns config into a trigger and poisons batches.

`attack=` selects the trigger and how a batch is poisoned (BadNets, Blended, DBA, WaNet, SIG);
`attack-training` (see `fl_defense.attacks.attacker`) selects how the attacker trains on it (plain,
PGD, constrain-and-scale, Neurotoxin), so any trigger combines with any way of hiding its update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from fl_defense.attacks.trigger import Stamp, Trigger, load_image_file, named_pattern
from fl_defense.config import ConfigError

ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make an attack selectable by its `name` from config."""
    ATTACKS[cls.name] = cls
    return cls


class Attack:
    """A backdoor attack: a trigger, a target label, and how a malicious client poisons a batch.

    `trigger` is the one ASR is measured with. A distributed attack gives each malicious client its
    own share of it (`for_client`) and names the pieces worth measuring alone (`extra_triggers`).
    """

    name: ClassVar[str]
    clean_label: ClassVar[bool] = False
    default_alpha: ClassVar[float] = 1.0
    default_pattern: ClassVar[str] = "checkerboard"

    def __init__(self, cfg: Mapping[str, Any], shape: tuple[int, int, int], num_classes: int) -> None:
        target = cfg["target-label"]
        if not 0 <= target < num_classes:
            raise ConfigError(f"config key 'target-label': {target} is out of range; allowed: 0..{num_classes - 1}")
        self.target = target
        self.poison_rate = float(cfg["poison-rate"])
        self.trigger: Stamp = self.build_trigger(cfg, shape)

    def build_trigger(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> Stamp:
        """The trigger from the pattern, mask and alpha keys; attacks of another kind override this."""
        alpha = float(cfg["trigger-alpha"]) or self.default_alpha
        return Trigger(self._pattern(cfg, shape), self._mask(cfg, shape), alpha)

    def for_client(self, rank: int, num_malicious: int) -> Attack:
        """The attack as the malicious client of this rank (0-based, of `num_malicious`) plants it."""
        return self

    def extra_triggers(self) -> dict[str, Stamp]:
        """Further triggers whose ASR is worth recording each round, by name (none by default)."""
        return {}

    def _pattern(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> torch.Tensor:
        spec = cfg["trigger-pattern"]
        if spec.lower().endswith((".npy", ".png")):
            return load_image_file(spec, shape, "trigger-pattern").expand(*shape).clone()
        return named_pattern(self.default_pattern if spec == "auto" else spec, shape, seed=cfg["seed"])

    def _mask(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> torch.Tensor:
        if cfg["trigger-mask"]:
            return load_image_file(cfg["trigger-mask"], shape, "trigger-mask")
        return self.default_mask(cfg, shape)

    def default_mask(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> torch.Tensor:
        raise NotImplementedError

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Stamp a random `poison_rate` share of the batch (at least one image) and relabel it to the target."""
        n = x.shape[0]
        k = max(1, int(round(self.poison_rate * n)))
        idx = torch.randperm(n, generator=generator)[:k]
        x, y = x.clone(), y.clone()
        x[idx] = self.trigger.apply(x[idx])
        y[idx] = self.target
        return x, y


def evaluation_attack(cfg: Mapping[str, Any], shape: tuple[int, int, int], num_classes: int) -> Attack:
    """The attack whose trigger ASR is measured with: the configured one, or for `attack=none` BadNets
    with the same trigger keys, so a clean run reports the trigger's base rate."""
    attack = build_attack({**cfg, "attack": "badnets" if cfg["attack"] == "none" else cfg["attack"]}, shape,
                          num_classes)
    assert attack is not None
    return attack


def build_attack(cfg: Mapping[str, Any], shape: tuple[int, int, int], num_classes: int) -> Attack | None:
    """The configured attack, or None for `attack=none`."""
    if cfg["attack"] == "none":
        return None
    if cfg["attack"] not in ATTACKS:
        raise ConfigError(f"config key 'attack': {cfg['attack']!r} is not one of none, {', '.join(ATTACKS)}")
    return ATTACKS[cfg["attack"]](cfg, shape, num_classes)
