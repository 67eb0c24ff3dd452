"""Blended (Chen et al. 2017): a pattern alpha-blended over the image, by default the whole of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import square_mask
from fl_defense.registry import ATTACKS


@ATTACKS.register("blended", summary="Blended (Chen et al. 2017): a full-image pattern (default seeded noise) blended at trigger-alpha 0.2")
class Blended(Attack):
    uses_mask = True
    default_alpha = 0.2
    default_pattern = "noise"

    def default_mask(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> torch.Tensor:
        size = cfg["trigger-size"]
        if not size:
            return torch.ones(1, shape[1], shape[2])
        return square_mask(shape, size, cfg["trigger-location"])
