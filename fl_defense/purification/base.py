"""Purifier interface and registry: a purifier takes a model and the server's clean set, returns a new model.

Algorithms here are Flower-free: tensors and models in, a model out. Purifiers that need the
backdoor trigger (MCL, NC unlearning, CNP with cnp-target=scan) receive the one trigger inversion
found; the others ignore it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fl_defense.attacks.trigger import Stamp
from fl_defense.models.base import BackdoorModel

PURIFIERS: dict[str, type[Purifier]] = {}


def register(cls: type[Purifier]) -> type[Purifier]:
    """Class decorator: make a purifier selectable by its `name` (config key `defense`)."""
    PURIFIERS[cls.name] = cls
    return cls


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
    """Base class: `purify` must not modify its input model."""

    name: ClassVar[str]
    needs_trigger: bool = False  # per class, or set in __init__ when the config decides it (CNP)

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    def report(self) -> dict[str, Any]:
        """What the last `purify` found and did, for the defense record; its keys override the
        pipeline's (a purifier that finds its own target reports its own `flagged` and timings)."""
        return {}

    def purify(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp | None,
               device: torch.device, generator: torch.Generator) -> BackdoorModel:
        raise NotImplementedError


def require_trigger(name: str, trigger: Stamp | None) -> Stamp:
    """The trigger a trigger-based purifier was given; an error naming the purifier when there is none."""
    if trigger is None:
        raise ValueError(f"{name} needs an inverted trigger; run trigger inversion first")
    return trigger


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
