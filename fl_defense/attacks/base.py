"""Attack interface: an attack turns config into a trigger and poisons batches (`attack=`).

`attack=` selects the trigger and how a batch is poisoned (BadNets, Blended, DBA, WaNet, SIG), one module
each; `attack-training` (see `fl_defense.attacks.attacker`) selects how the attacker trains on it (plain,
PGD, constrain-and-scale, Neurotoxin), so any trigger combines with any way of hiding its update. The
trigger keys every attack reads are declared here, for the whole family.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from fl_defense.attacks.trigger import Stamp, Trigger, load_image_file, named_pattern
from fl_defense.data.datasets import dataset_spec
from fl_defense.errors import ConfigError
from fl_defense.registry import ATTACKS, Option, between, non_negative

LOCATION_RE = re.compile(r"^(bottom-right|bottom-left|top-right|top-left|center|\d+,\d+)$")


class Attack:
    """A backdoor attack: a trigger, a target label, and how a malicious client poisons a batch.

    `trigger` is the one ASR is measured with. A distributed attack gives each malicious client its
    own share of it (`for_client`) and names the pieces worth measuring alone (`extra_triggers`).
    """

    name: ClassVar[str]
    clean_label: ClassVar[bool] = False
    uses_mask: ClassVar[bool] = False  # whether `trigger-mask` means something to it
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
        raise NotImplementedError(f"attack {self.name!r} builds its own trigger")

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
    attack: Attack = ATTACKS[cfg["attack"]](cfg, shape, num_classes)
    return attack


def _check_trigger_fits(cfg: Mapping[str, Any]) -> None:
    spec = dataset_spec(cfg["dataset"])
    if cfg["target-label"] >= spec.num_classes:
        raise ConfigError(f"config key 'target-label': {cfg['target-label']} is out of range for {cfg['dataset']}; "
                          f"allowed: 0..{spec.num_classes - 1}")
    if cfg["trigger-size"] > spec.size:
        raise ConfigError(f"config key 'trigger-size': {cfg['trigger-size']} is larger than the {spec.size}x"
                          f"{spec.size} images of {cfg['dataset']}; allowed: 0..{spec.size}")


def _check_trigger_files(cfg: Mapping[str, Any]) -> None:
    for key in ("trigger-pattern", "trigger-mask"):
        path = cfg[key]
        if path.lower().endswith((".npy", ".png")) and not Path(path).is_file():
            raise ConfigError(f"config key '{key}': file {path!r} " +
                              ("is a folder" if Path(path).is_dir() else "does not exist"))
    masked = [e.name for e in ATTACKS if e.obj.uses_mask]
    if cfg["trigger-mask"] and cfg["attack"] not in masked:
        raise ConfigError(f"config key 'trigger-mask': a trigger mask needs attack {' or '.join(masked)}, not "
                          f"{cfg['attack']!r}")


ATTACKS.family(options=[
    Option("trigger-pattern", "auto", "trigger pattern of badnets, blended and dba; auto: badnets checkerboard, "
           "blended noise, dba white; or checkerboard, white, noise, or a .npy/.png file",
           check=lambda v: v in ("auto", "checkerboard", "white", "noise") or v.lower().endswith((".npy", ".png")),
           allowed="auto, checkerboard, white, noise, or a path ending in .npy or .png"),
    Option("trigger-mask", "", "trigger mask file (.npy/.png); empty: derived from size and location",
           check=lambda v: v == "" or v.lower().endswith((".npy", ".png")), allowed="empty, or a path ending in .npy or .png"),
    non_negative("trigger-size", 0, "side of the trigger square in pixels; 0: badnets max(3, side/7), blended the "
                 "whole image"),
    Option("trigger-location", "bottom-right", "where the trigger square sits", check=lambda v: bool(LOCATION_RE.match(v)),
           allowed="bottom-right, bottom-left, top-right, top-left, center, or 'row,col'"),
    between("trigger-alpha", 0.0, "trigger opacity; 0: badnets 1.0, blended 0.2", 0, 1),
    Option("target-label", 0, "label the backdoor maps triggered inputs to", check=lambda v: v >= 0,
           allowed="an integer in [0, num_classes)"),
    between("poison-rate", 0.5, "share of each malicious batch that is triggered and relabelled", 0, 1, "(]"),
], checks=[_check_trigger_fits, _check_trigger_files])
