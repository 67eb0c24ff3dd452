"""Trigger sources: how the server finds a backdoor's trigger and target label (`inversion=`), one module each.

A source looks at a model with the server's clean set and says which labels it flags as backdoor targets
(likeliest first, none when it sees no backdoor) and, for each label it could, the trigger it inverted.
What a source learns once and reuses at later calls of a run (the clean reference models that tell backdoors
from natural features, a generator's weights, the last warps to warm-start from) is its state, saved in the run's
checkpoint. The defense pipeline (`fl_defense.defense`) adds the run's memory of what was flagged and hands the
chosen trigger to the purifier.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fl_defense.attacks.trigger import Stamp
from fl_defense.inversion.reference import CleanReference
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet


@dataclass
class Finding:
    """What a source found in one model: flagged labels (likeliest first), the trigger it inverted for each label
    it could, a JSON-able record of what it saw (per label) for results.json, and, where it checked, each label's
    transfer rate to the clean reference models (what orders flagged labels: a backdoor's trigger fools them least;
    a `LazyRates` computes a label's when first read), and the labels whose trigger works on the model, for which a
    low rate is evidence of a backdoor (None: every label's; a scan with a fixed budget, the warp or blend scan, may
    invert a trigger that fools neither the model nor the references, and its low rate says nothing)."""

    flagged: list[int]
    triggers: dict[int, Stamp]
    record: dict[str, Any] = field(default_factory=dict)
    transfer: Mapping[int, float] | Sequence[float] | None = None
    works: Collection[int] | None = None


class TriggerSource:
    """Base class: `find` must not modify the model. `reference` holds the clean reference models, for the sources
    that check transfer (`nc-references` of them, `nc-reference-epochs` of training each, at their first call)."""

    name: ClassVar[str]

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.reference = CleanReference(int(cfg.get("nc-reference-epochs", 0)), int(cfg.get("nc-references", 1)))

    def find(self, model: BackdoorModel, clean: CleanSet, num_classes: int, device: torch.device,
             generator: torch.Generator) -> Finding:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the source carries between the calls of a run (plain tensors, for a weights-only checkpoint)."""
        return {"reference": self.reference.state_dict(), **self.own_state()}

    def load_state_dict(self, state: Mapping[str, Any], model: BackdoorModel) -> None:
        """Restore `state_dict`; `model` gives the architecture of any model the state holds."""
        self.reference.load_state_dict(state.get("reference"), model)
        self.load_own_state(state)

    def own_state(self) -> dict[str, Any]:
        """The source's state besides the reference models, which a pair of sources shares (none by default)."""
        return {}

    def load_own_state(self, state: Mapping[str, Any]) -> None:
        """Restore `own_state`."""
