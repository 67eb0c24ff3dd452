"""Neural Attention Distillation (Li et al., ICLR 2021): a teacher fine-tuned on the clean set guides a
student (a fresh copy of the backdoored model) to match its attention maps, which erases the
trigger's attention pattern better than fine-tuning alone."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, CleanSetPurifier, frozen_copy, trainable_copy
from fl_defense.purification.ft import fine_tune
from fl_defense.registry import PURIFIERS, non_negative


def attention(fm: torch.Tensor) -> torch.Tensor:
    """Spatial attention of an N x C x H x W map: channel mean of a^2, flattened, unit L2 norm per sample."""
    return F.normalize(fm.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Attention-transfer loss as in the NAD code (and BackdoorBench): the MSE of the two attention
    maps, i.e. ||A_s - A_t||_2^2 averaged over the batch and the H*W positions (the paper writes the
    un-squared norm; `nad-beta`'s scale, 1000 by default as there, is meant for this form)."""
    return F.mse_loss(attention(student), attention(teacher))


@PURIFIERS.register("nad", options=[
    non_negative("nad-beta", 1000.0, "NAD attention-distillation weight per attention layer"),
], summary="neural attention distillation from a teacher fine-tuned on the clean set")
class NAD(CleanSetPurifier):
    def purify(self, model: BackdoorModel, clean: CleanSet, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        teacher = frozen_copy(fine_tune(trainable_copy(model, device), clean, self.cfg, device, generator), device)
        beta = self.cfg["nad-beta"]

        def distill(student: BackdoorModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, maps = student.logits_and_maps(x)
            with torch.no_grad():
                targets = teacher.feature_maps(x)
            at = torch.stack([attention_loss(s, t) for s, t in zip(maps, targets, strict=True)]).sum()
            return F.cross_entropy(logits, y) + beta * at

        return fine_tune(trainable_copy(model, device), clean, self.cfg, device, generator, loss_fn=distill)
