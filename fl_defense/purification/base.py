"""Purifier interface: a purifier takes a model and the server's clean set, returns a new model (`defense=`).

Algorithms here are Flower-free: tensors and models in, a model out. There are two kinds. A
`TriggerPurifier` (MCL, NC unlearning, CNP) needs the backdoor's trigger: the defense pipeline finds it
first with the trigger source the purifier names (`inversion=`), and calls the purifier only with one. A
`CleanSetPurifier` (fine-tuning, fine-pruning, NAD) needs only the clean set. Each purifier is one module
of this package that registers itself (`PURIFIERS`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fl_defense.attacks.trigger import Stamp
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import PURIFIERS, positive


@dataclass(frozen=True)
class CleanSet:
    """The server's held-out clean data: float images in [0, 1] (N x C x H x W) and int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def batches(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Shuffled index batches covering the set once (the last, partial one kept if it has 2+ items)."""
        order = torch.randperm(len(self.x), generator=generator)
        return [b for b in order.split(batch_size) if len(b) > 1]


class Purifier:
    """What every purifier has: its config, and `report`, what its last call found and did. `purify` must
    not modify its input model."""

    name: ClassVar[str]

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    def trigger_source(self) -> str | None:
        """The trigger source (`inversion` registry name) this purifier needs, or None."""
        return None

    def report(self) -> dict[str, Any]:
        """What the last `purify` found and did, for the defense record."""
        return {}

    def apply(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp | None, device: torch.device,
              generator: torch.Generator) -> BackdoorModel:
        """The pipeline's one call for both kinds: `purify` with the trigger if this kind takes one."""
        raise NotImplementedError


class CleanSetPurifier(Purifier):
    """A purifier that needs only the clean set."""

    def apply(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp | None, device: torch.device,
              generator: torch.Generator) -> BackdoorModel:
        return self.purify(model, clean, device, generator)

    def purify(self, model: BackdoorModel, clean: CleanSet, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        raise NotImplementedError


class TriggerPurifier(Purifier):
    """A purifier that needs the backdoor's trigger; by default from the run's `inversion` source."""

    def trigger_source(self) -> str:
        source: str = self.cfg["inversion"]
        return source

    def apply(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp | None, device: torch.device,
              generator: torch.Generator) -> BackdoorModel:
        assert trigger is not None, "the pipeline calls a trigger purifier only with a trigger"
        return self.purify(model, clean, trigger, device, generator)

    def purify(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        raise NotImplementedError


def build_purifier(cfg: Mapping[str, Any]) -> Purifier:
    """The configured purifier; `defense=none` has none, so callers check for it first."""
    purifier: Purifier = PURIFIERS[cfg["defense"]](cfg)
    return purifier


def trainable_copy(model: BackdoorModel, device: torch.device) -> BackdoorModel:
    """A deep copy on `device`, in train mode with every parameter trainable, for a purifier to update."""
    trainable = copy.deepcopy(model).to(device).train()
    for p in trainable.parameters():
        p.requires_grad_(True)
    return trainable


def frozen_copy(model: BackdoorModel, device: torch.device) -> BackdoorModel:
    """A deep copy on `device`, in eval mode with gradients off (a teacher or a reference model)."""
    frozen = copy.deepcopy(model).to(device).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def step_lr(epoch: int, lr: float, epochs: int) -> float:
    """Step decay used by the purifiers: full lr for the first half, /10 to 3/4, /100 after."""
    if epoch < epochs // 2:
        return lr
    if epoch < (3 * epochs) // 4:
        return lr * 0.1
    return lr * 0.01


PURIFIERS.family(options=[positive("purify-batch-size", 64, "batch size of FT, NC unlearning, FP's fine-tune and NAD")])
