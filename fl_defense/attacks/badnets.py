"""BadNets (Gu et al. 2017): a small opaque patch, by default a checkerboard in the bottom-right corner."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import square_mask
from fl_defense.registry import ATTACKS


@ATTACKS.register("badnets", summary="BadNets (Gu et al. 2017): a small opaque patch, by default a 4x4 checkerboard")
class BadNets(Attack):
    uses_mask = True
    default_alpha = 1.0

    def default_mask(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> torch.Tensor:
        size = cfg["trigger-size"] or max(3, shape[1] // 7)
        return square_mask(shape, size, cfg["trigger-location"])
