"""SIG (Barni, Kallas & Tondi, ICIP 2019): a clean-label backdoor with a sinusoidal signal as the trigger.

The trigger adds v(i, j) = delta * sin(2 pi j f / W) to every row and channel and clips to [0, 1]. The
default delta is 0.6 with BackdoorBench's f 6: its delta 40/255, made for centralised training on a
poisoned dataset, planted 0.10 in 20 federated rounds of the default setting, where two clients' target
images are the only carriers and eight benign updates average the signal away each round.

Clean-label: the attacker stamps only images that already carry the target label and never changes a
label, so a data inspector sees correctly labelled images; the model learns the signal as a shortcut to
the target. `poison-rate` is the share of a batch's target-class images that are stamped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import Stamp
from fl_defense.registry import ATTACKS, between, positive


@dataclass(frozen=True)
class SignalTrigger:
    """An additive signal (C x H x W or 1 x H x W); the result is clipped to [0, 1]."""

    signal: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.signal.to(x.device, x.dtype)).clamp(0, 1)


def sine_signal(shape: tuple[int, int, int], delta: float, frequency: float) -> torch.Tensor:
    """delta * sin(2 pi j f / W) over the columns j, the same on every row and channel."""
    _, h, w = shape
    row = delta * torch.sin(2 * math.pi * torch.arange(w, dtype=torch.float32) * frequency / w)
    return row.expand(1, h, w).clone()


@ATTACKS.register("sig", options=[
    between("sig-delta", 0.6, "sig: amplitude of the sinusoid in [0, 1] pixel units (BackdoorBench: 40/255, which "
            "plants 0.10 in 20 rounds of the default setting; 0.6 plants 0.95)", 0, 1, "(]"),
    positive("sig-frequency", 6.0, "sig: periods of the sinusoid across the image width (BackdoorBench: 6)"),
], summary="SIG (Barni et al. 2019), clean-label: a sinusoid added to target-class images, no label changed")
class SIG(Attack):
    clean_label = True

    def build_trigger(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> Stamp:
        return SignalTrigger(sine_signal(shape, cfg["sig-delta"], cfg["sig-frequency"]))

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Stamp a `poison_rate` share of the target-class images (at least one if any); labels unchanged."""
        candidates = (y == self.target).nonzero().flatten()
        if len(candidates) == 0:
            return x, y
        k = max(1, int(round(self.poison_rate * len(candidates))))
        idx = candidates[torch.randperm(len(candidates), generator=generator)[:k]]
        x = x.clone()
        x[idx] = self.trigger.apply(x[idx])
        return x, y
