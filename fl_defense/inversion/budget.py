"""The configured inversion budget: NC settings and the clean images they run on, shared by every caller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.inversion.neural_cleanse import NCSettings


def nc_settings(cfg: Mapping[str, Any]) -> NCSettings:
    """The inversion budget: BackdoorBench's reference, or the fast early-stopped one (the default)."""
    if cfg["nc-budget"] == "reference":
        return NCSettings()
    return NCSettings(epochs=cfg["nc-epochs"], batch_size=64, patience=2, early_stop_patience=4)


def inversion_images(images: torch.Tensor, cfg: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
    """The clean images inversion runs on: all for the reference budget, else a seeded subset."""
    n = cfg["nc-images"]
    if cfg["nc-budget"] == "reference" or n == 0 or n >= len(images):
        return images
    return images[torch.randperm(len(images), generator=generator)[:n]]
