"""`client-defense=none`: the honest client's plain local SGD (the run's lr, momentum, weight decay)."""

from __future__ import annotations

import torch

from fl_defense.client_defenses.base import ClientDefense, Memory
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import CLIENT_DEFENSES
from fl_defense.training import train_local


@CLIENT_DEFENSES.register("none", summary="plain local SGD (the run's lr, momentum, weight decay)")
class Plain(ClientDefense):

    def train(self, model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
              server_round: int, generator: torch.Generator, device: torch.device, memory: Memory) -> float:
        cfg = self.cfg
        return train_local(model, images, labels, indices, epochs=cfg["local-epochs"], batch_size=cfg["batch-size"],
                           lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight-decay"],
                           generator=generator, device=device, amp=cfg["amp"])
