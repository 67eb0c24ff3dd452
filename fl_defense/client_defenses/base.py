"""Training code of honest clients, selected by `client-defense`: plain SGD or a training-time defense.

A client defense trains the received global model on the client's local data for one round. It is
Flower-free: a model, uint8 images, labels and an index slice in; the mean training loss out. What a
defense must keep between the rounds of one client (ABL's isolated samples, DBD's projection head)
lives in `memory`, a dict of tensors that the ClientApp stores in the node's `context.state`. Each defense
is one module of this package that registers itself (`CLIENT_DEFENSES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from fl_defense.models.base import BackdoorModel
from fl_defense.registry import CLIENT_DEFENSES

Memory = dict[str, torch.Tensor]


class ClientDefense:
    """Base class. `train` updates `model` in place and returns the mean training loss of the round."""

    name: ClassVar[str]

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    def train(self, model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
              server_round: int, generator: torch.Generator, device: torch.device, memory: Memory) -> float:
        raise NotImplementedError


def build_client_defense(cfg: Mapping[str, Any]) -> ClientDefense:
    """The configured honest training code."""
    defense: ClientDefense = CLIENT_DEFENSES[cfg["client-defense"]](cfg)
    return defense
