"""Data poisoning by a third party (threat `poisoned-data`): a client's stored data, not its code, is attacked.

Unlike `Attack.poison_batch`, which re-draws the poisoned share of every batch, the poison here is
fixed: a seeded share of the images is stamped once, stored as uint8 like the real data, and
relabelled to the target, so an honest client sees the same poisoned samples every round (what
sample-isolating defenses such as ABL assume).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_defense.attacks.base import Attack
from fl_defense.data import to_float


@dataclass(frozen=True)
class PoisonedData:
    """A poisoned copy of some images and labels, and the positions (sorted) that were poisoned."""

    images: torch.Tensor
    labels: torch.Tensor
    poisoned: torch.Tensor


def poison_data(images: torch.Tensor, labels: torch.Tensor, attack: Attack,
                generator: torch.Generator) -> PoisonedData:
    """Stamp round(`attack.poison_rate` * n) images (at least one) chosen by `generator`, relabel them.

    A clean-label attack (SIG) stamps that share of the target-class images only and changes no label.
    `images` are uint8 (N x C x H x W); the stamped ones are rounded back to uint8, as a poisoned
    file on disk would be. The inputs are not modified.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    candidates = (labels == attack.target).nonzero().flatten() if attack.clean_label else torch.arange(len(images))
    n = len(candidates)
    k = min(n, max(1, int(round(attack.poison_rate * n))))
    poisoned = candidates[torch.randperm(n, generator=generator)[:k]].sort().values
    out_x, out_y = images.clone(), labels.clone()
    stamped = attack.trigger.apply(to_float(images[poisoned]))
    out_x[poisoned] = (stamped * 255).round().clamp(0, 255).to(torch.uint8)
    out_y[poisoned] = attack.target
    return PoisonedData(out_x, out_y, poisoned)
