"""Neural Cleanse unlearning (Wang et al., S&P 2019): fine-tune with the inverted trigger stamped on a
share of each batch, labels kept true, so the model learns that the trigger means nothing."""

from __future__ import annotations

import torch

from fl_defense.attacks.trigger import Stamp
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, TriggerPurifier, trainable_copy
from fl_defense.purification.ft import fine_tune
from fl_defense.registry import PURIFIERS, between


@PURIFIERS.register("nc-unlearn", options=[
    between("nc-unlearn-ratio", 0.2, "share of each NC-unlearning batch stamped with the inverted trigger", 0, 1, "()"),
], summary="Neural Cleanse unlearning: fine-tune on clean images, some stamped with the trigger, true labels")
class NCUnlearning(TriggerPurifier):
    def purify(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        ratio = self.cfg["nc-unlearn-ratio"]

        def stamp(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            k = max(1, round(ratio * len(x)))
            idx = torch.randperm(len(x), generator=g)[:k].to(x.device)
            x = x.clone()
            x[idx] = trigger.apply(x[idx])
            return x, y

        return fine_tune(trainable_copy(model, device), clean, self.cfg, device, generator, batch_hook=stamp)
