"""Fine-tuning (FT): plain SGD on the server's clean set, the baseline every purifier is compared with.

`fine_tune` is also the training loop of NC unlearning, fine-pruning and NAD, which differ from FT
only in how a batch is altered, what the loss is, or what is re-imposed after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.nn import functional as F

from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, CleanSetPurifier, step_lr, trainable_copy
from fl_defense.registry import PURIFIERS, positive
from fl_defense.training import BatchHook

LossFn = Callable[[BackdoorModel, torch.Tensor, torch.Tensor], torch.Tensor]

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def cross_entropy(model: BackdoorModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def fine_tune(model: BackdoorModel, clean: CleanSet, cfg: Mapping[str, Any], device: torch.device,
              generator: torch.Generator, *, loss_fn: LossFn = cross_entropy, batch_hook: BatchHook | None = None,
              after_step: Callable[[BackdoorModel], None] | None = None) -> BackdoorModel:
    """Train `model` in place: SGD (momentum 0.9, weight decay 5e-4), `ft-epochs` over the clean set.

    The learning rate `ft-lr` decays with `step_lr`; batches of `purify-batch-size` are drawn from
    `generator`. `batch_hook` may rewrite a batch (on `device`), `after_step` re-imposes a constraint
    after every update. Returns the model in eval mode.
    """
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg["ft-lr"], momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    epochs = cfg["ft-epochs"]
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = step_lr(epoch, cfg["ft-lr"], epochs)
        for idx in clean.batches(cfg["purify-batch-size"], generator):
            x, y = clean.x[idx].to(device), clean.y[idx].to(device)
            if batch_hook is not None:
                x, y = batch_hook(x, y, generator)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(model)
    return model.eval()


@PURIFIERS.register("ft", options=[
    positive("ft-epochs", 10, "epochs over the clean set for FT, NC unlearning, FP's fine-tune and NAD"),
    positive("ft-lr", 0.01, "SGD learning rate of FT, NC unlearning, FP and NAD"),
], summary="fine-tuning on the clean set")
class FineTuning(CleanSetPurifier):
    """FT: backdoor neurons that clean data never exercises are left to weight decay and drift."""

    def purify(self, model: BackdoorModel, clean: CleanSet, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        return fine_tune(trainable_copy(model, device), clean, self.cfg, device, generator)
