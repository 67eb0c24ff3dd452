"""MCL: Model-Contrastive Learning for backdoor elimination (arXiv 2205.04411; ACM MM 2023).

With x clean and x' = x stamped with the inverted trigger, the model being purified produces the
anchor a = f(x'); a frozen copy of the backdoored model gives the positive p = f0(x) and the negative
n = f0(x'). The loss -log(e^{cos(a,p)/tau} / (e^{cos(a,p)/tau} + e^{cos(a,n)/tau})) pulls triggered
features to where the backdoored model puts clean ones, and away from where it puts triggered ones,
on the penultimate features (no projection head, as in the reference code).

Deviation from the reference, measured on this project's setting (benchmarks/README.md): the
reference uses the contrastive loss alone and loses 10-15 BA points on Fashion-MNIST; an optional
cross-entropy term on the clean and the stamped images with their true labels (weight
`mcl-ce-weight`) holds BA. Weight 0 gives the reference method.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fl_defense.attacks.trigger import Stamp
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, TriggerPurifier, frozen_copy, step_lr, trainable_copy
from fl_defense.registry import PURIFIERS, non_negative, positive


def mcl_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over the batch of -log softmax([cos(a,p), cos(a,n)] / tau)[0]."""
    logits = torch.stack([F.cosine_similarity(anchor, positive, dim=1),
                          F.cosine_similarity(anchor, negative, dim=1)], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


@PURIFIERS.register("mcl", options=[
    positive("mcl-epochs", 10, "MCL epochs over the clean set"),
    positive("mcl-lr", 0.01, "MCL SGD learning rate (step-decayed)"),
    positive("mcl-tau", 0.5, "MCL temperature"),
    positive("mcl-batch-size", 64, "MCL batch size"),
    non_negative("mcl-ce-weight", 1.0, "weight of MCL's cross-entropy term on clean + stamped images (0: reference MCL)"),
], summary="MCL: contrastive loss pulling triggered features to the frozen model's clean features (+ CE)")
class MCL(TriggerPurifier):
    def purify(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        cfg = self.cfg
        epochs, lr, tau, ce_weight = cfg["mcl-epochs"], cfg["mcl-lr"], cfg["mcl-tau"], cfg["mcl-ce-weight"]
        student, frozen = trainable_copy(model, device), frozen_copy(model, device)
        opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = step_lr(epoch, lr, epochs)
            for idx in clean.batches(cfg["mcl-batch-size"], generator):
                x, y = clean.x[idx].to(device), clean.y[idx].to(device)
                stamped = trigger.apply(x)
                with torch.no_grad():
                    positive, negative = frozen.features(x), frozen.features(stamped)
                if ce_weight > 0:
                    feats = student.features(torch.cat([x, stamped]))
                    anchor = feats[len(x):]
                    loss = mcl_loss(anchor, positive, negative, tau) + ce_weight * F.cross_entropy(
                        student.classify(feats), torch.cat([y, y]))
                else:
                    loss = mcl_loss(student.features(stamped), positive, negative, tau)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return student.eval()
