"""Fine-pruning (Liu et al., RAID 2018): prune the last conv stage's channels that clean data leaves
dormant (where backdoors tend to hide), as far as clean accuracy allows, then fine-tune."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.metrics import clean_accuracy
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, CleanSetPurifier, frozen_copy, trainable_copy
from fl_defense.purification.ft import fine_tune
from fl_defense.registry import PURIFIERS, between

STEP_SHARE = 0.05


@torch.inference_mode()
def dormancy_order(model: BackdoorModel, clean: CleanSet, batch_size: int, device: torch.device) -> torch.Tensor:
    """Last-stage channels sorted by mean activation on the clean set, least active first."""
    sums = [model.feature_maps(clean.x[start:start + batch_size].to(device))[-1].sum(dim=(0, 2, 3))
            for start in range(0, len(clean.x), batch_size)]
    return torch.argsort(torch.stack(sums).sum(0)).cpu()


@PURIFIERS.register("fp", options=[
    between("fp-max-ba-drop", 0.05, "fine-pruning stops pruning before clean-set accuracy drops by more", 0, 1, "()"),
    between("fp-max-prune-ratio", 0.9, "fine-pruning prunes at most this share of last-layer channels", 0, 1, "()"),
], summary="fine-pruning: prune dormant last-stage channels within a BA budget, then fine-tune")
class FinePruning(CleanSetPurifier):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self.pruned_channels = torch.empty(0, dtype=torch.long)

    def report(self) -> dict[str, Any]:
        """The last-stage channels the last `purify` pruned, least active on the clean set first."""
        return {"fp_pruned_channels": [int(c) for c in self.pruned_channels]}

    def purify(self, model: BackdoorModel, clean: CleanSet, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        probe = frozen_copy(model, device)
        order = dormancy_order(probe, clean, self.cfg["eval-batch-size"], device)
        self.pruned_channels = order[:self._prune_count(probe, order, clean, device)]

        student = trainable_copy(model, device)
        student.prune_channels(self.pruned_channels)
        # Fine-tuning would regrow pruned head columns (ResNet), so the pruning is re-imposed each step.
        return fine_tune(student, clean, self.cfg, device, generator,
                         after_step=lambda m: m.prune_channels(self.pruned_channels))

    def _prune_count(self, probe: BackdoorModel, order: torch.Tensor, clean: CleanSet, device: torch.device) -> int:
        """The largest count, in steps of ~5% of the channels, whose clean accuracy stays within
        `fp-max-ba-drop` of the unpruned model's, up to `fp-max-prune-ratio` of the channels.

        Prunes `probe` cumulatively and stops at the first count that drops too far.
        """
        batch = self.cfg["eval-batch-size"]
        n = len(order)
        step = max(1, round(STEP_SHARE * n))
        limit = int(self.cfg["fp-max-prune-ratio"] * n)
        floor = clean_accuracy(probe, clean.x, clean.y, batch, device) - self.cfg["fp-max-ba-drop"]
        kept = 0
        for count in range(step, limit + 1, step):
            probe.prune_channels(order[kept:count])
            if clean_accuracy(probe, clean.x, clean.y, batch, device) < floor:
                break
            kept = count
        return kept
