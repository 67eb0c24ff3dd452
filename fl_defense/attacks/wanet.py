"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warp of the whole image as the trigger.

A k x k grid of random control offsets, normalised to mean absolute value 1, is upsampled
(bicubic) to a flow field and added to the identity sampling grid at strength s / H (in grid_sample's
[-1, 1] coordinates, so a control offset of 1 moves a pixel by s/2 pixels). The paper's "noise mode"
is available: besides the poisoned images, a `wanet-cross-ratio` multiple of them is warped with the
trigger's grid plus random noise of up to half a pixel and keeps its true label, so the model learns the
exact warp rather than warping in general. The grid is seeded by `seed`, so every client and the server
share it.

Defaults differ from the paper's (s 0.5, cross ratio 2, made for centralised training of hundreds of
epochs): in 20 federated rounds of the default setting, where eight benign updates are averaged with the
two attackers' each round, they planted 0.17, and noise mode kept a twice as strong warp at 0.70-0.82.
Without noise mode, s 4 (a mean shift of 2 pixels) plants 0.97 (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import Stamp
from fl_defense.registry import ATTACKS, Option, non_negative, positive


def identity_grid(height: int, width: int) -> torch.Tensor:
    """The 1 x H x W x 2 sampling grid (x, y in [-1, 1]) that grid_sample maps to the image itself."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack((xs, ys), dim=-1)[None]


def flow_field(height: int, width: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Random control offsets on a k x k grid, mean |offset| 1, upsampled to 1 x H x W x 2."""
    control = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    control = control / control.abs().mean()
    return F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


@dataclass(frozen=True)
class WarpTrigger:
    """A fixed warp: images are resampled at `grid` (1 x H x W x 2, in [-1, 1])."""

    grid: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid.to(x.device, x.dtype).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)


def warp_grid(height: int, width: int, k: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """The trigger's sampling grid: identity plus strength / H times the flow field, clamped to the image."""
    return (identity_grid(height, width) + strength * flow_field(height, width, k, generator) / height).clamp(-1, 1)


@ATTACKS.register("wanet", options=[
    Option("wanet-grid", 4, "wanet: control grid size k of the warp (the paper: 4)", check=lambda v: v >= 2,
           allowed="an integer >= 2"),
    positive("wanet-strength", 4.0, "wanet: warp strength s; a control offset of 1 moves a pixel by s/2 pixels (the "
             "paper: 0.5, which plants 0.17 in 20 rounds of the default setting)"),
    non_negative("wanet-cross-ratio", 0.0, "wanet: noise-mode images (warped with the trigger's grid plus noise, "
                 "true label) per poisoned image (the paper: 2; with it s 2 plants 0.70 in 20 rounds of the default "
                 "setting, without it 0.86, s 4 0.97)"),
], summary="WaNet (Nguyen & Tran 2021): a fixed smooth warp of the whole image")
class WaNet(Attack):

    def build_trigger(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> Stamp:
        _, h, w = shape
        generator = torch.Generator().manual_seed(cfg["seed"])
        self.cross_ratio = float(cfg["wanet-cross-ratio"])
        return WarpTrigger(warp_grid(h, w, cfg["wanet-grid"], cfg["wanet-strength"], generator))

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp a `poison_rate` share (at least one) to the target; warp up to `cross_ratio` times as many
        others with a noisy grid, keeping their labels (noise mode)."""
        n = x.shape[0]
        k = max(1, int(round(self.poison_rate * n)))
        order = torch.randperm(n, generator=generator)
        bad = order[:k]
        cross = order[k:k + min(n - k, int(round(self.cross_ratio * k)))]
        x, y = x.clone(), y.clone()
        x[bad] = self.trigger.apply(x[bad])
        y[bad] = self.target
        if len(cross):
            assert isinstance(self.trigger, WarpTrigger)
            _, _, h, w = x.shape
            noise = (torch.rand(len(cross), h, w, 2, generator=generator) * 2 - 1) / h
            grid = (self.trigger.grid.to(x.dtype) + noise).clamp(-1, 1)
            x[cross] = F.grid_sample(x[cross], grid, align_corners=True).clamp(0, 1)
        return x, y
