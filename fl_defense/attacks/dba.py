"""DBA, the distributed backdoor attack (Xie et al., ICLR 2020).

The global trigger is split into local pieces, and each malicious client plants only its own. The
layout is the paper's: `dba-pieces` bars of `dba-piece-height` x `dba-piece-width` pixels in two rows,
`dba-gap` pixels apart (their MNIST setting: 4 bars of 1x4, gap 2), placed as a whole at
`trigger-location`. ASR is measured with the full trigger, as in the paper, and with each piece alone.

With fewer malicious clients than pieces, client r of M plants every piece p with p mod M == r (one
trigger made of its pieces), so that every piece is planted by someone; with more, client r plants
piece r mod K.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import Stamp, Trigger, TriggerError, place
from fl_defense.registry import ATTACKS, non_negative, positive


def piece_masks(shape: tuple[int, int, int], pieces: int, height: int, width: int, gap: int,
                location: str) -> list[torch.Tensor]:
    """The 1 x H x W masks of the pieces: two rows of bars, the first row holding the extra one if odd."""
    per_row = (pieces + 1) // 2
    rows = 2 if pieces > 1 else 1
    box_h, box_w = rows * height + (rows - 1) * gap, per_row * width + (per_row - 1) * gap
    _, h, w = shape
    if box_h > h or box_w > w:
        raise TriggerError(f"config key 'dba-pieces': {pieces} pieces of {height}x{width} with gap {gap} need a "
                           f"{box_h}x{box_w} box, larger than the {h}x{w} images")
    top, left = place(shape, box_h, box_w, location)
    masks = []
    for p in range(pieces):
        r = top + (p // per_row) * (height + gap)
        c = left + (p % per_row) * (width + gap)
        m = torch.zeros(1, h, w)
        m[:, r:r + height, c:c + width] = 1.0
        masks.append(m)
    return masks


def pieces_of(rank: int, num_malicious: int, pieces: int) -> list[int]:
    """The pieces the malicious client of this rank plants (see the module docstring)."""
    if num_malicious >= pieces:
        return [rank % pieces]
    return [p for p in range(pieces) if p % num_malicious == rank % num_malicious]


@ATTACKS.register("dba", options=[
    positive("dba-pieces", 4, "dba: number of local trigger pieces (the paper: 4)"),
    positive("dba-piece-height", 1, "dba: height of a piece in pixels (the paper's MNIST: 1)"),
    positive("dba-piece-width", 4, "dba: width of a piece in pixels (the paper's MNIST: 4)"),
    non_negative("dba-gap", 2, "dba: pixels between pieces (the paper's MNIST: 2)"),
], summary="DBA (Xie et al. 2020): the global trigger is bars; each malicious client plants only its own pieces")
class DBA(Attack):
    default_alpha = 1.0
    default_pattern = "white"

    def build_trigger(self, cfg: Mapping[str, Any], shape: tuple[int, int, int]) -> Stamp:
        alpha = float(cfg["trigger-alpha"]) or self.default_alpha
        pattern = self._pattern(cfg, shape)
        self.piece_triggers = [Trigger(pattern, m, alpha) for m in piece_masks(
            shape, cfg["dba-pieces"], cfg["dba-piece-height"], cfg["dba-piece-width"], cfg["dba-gap"],
            cfg["trigger-location"])]
        full = torch.stack([t.mask for t in self.piece_triggers]).amax(0)
        return Trigger(pattern, full, alpha)

    def for_client(self, rank: int, num_malicious: int) -> Attack:
        local = copy.copy(self)
        own = [self.piece_triggers[p] for p in pieces_of(rank, num_malicious, len(self.piece_triggers))]
        mask = torch.stack([t.mask for t in own]).amax(0)
        local.trigger = Trigger(own[0].pattern, mask, own[0].alpha)
        return local

    def extra_triggers(self) -> dict[str, Stamp]:
        return {f"piece-{p}": t for p, t in enumerate(self.piece_triggers)}
