"""Scan every label with Neural Cleanse and flag the backdoor targets by their anomaly index."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_defense.attacks.trigger import Trigger
from fl_defense.inversion.neural_cleanse import LabelInversion, NCSettings, anomaly_indices, invert


@dataclass
class ScanResult:
    """Per-label mask norms and anomaly indices, the flagged labels (most anomalous first), timing."""

    inversions: list[LabelInversion]
    indices: np.ndarray
    flagged: list[int]
    seconds: float
    mode: str

    @property
    def norms(self) -> list[float]:
        return [inv.norm for inv in self.inversions]

    def trigger(self) -> Trigger | None:
        """The inverted trigger of the most anomalous flagged label; None when nothing is flagged."""
        if not self.flagged:
            return None
        inv = self.inversions[self.flagged[0]]
        return Trigger(pattern=inv.pattern, mask=inv.mask, alpha=1.0)

    def record(self) -> dict[str, Any]:
        """JSON-able summary for results.json."""
        return {
            "mode": self.mode,
            "flagged": self.flagged,
            "mask_l1": [round(v, 3) for v in self.norms],
            "anomaly_index": [round(float(v), 3) for v in self.indices],
            "epochs": [inv.epochs for inv in self.inversions],
            "inversion_seconds": self.seconds,
        }


def scan(model: nn.Module, images: torch.Tensor, num_classes: int, *, mode: str, settings: NCSettings,
         threshold: float, log_norms: bool, generator: torch.Generator, device: torch.device) -> ScanResult:
    """Invert every label (`loop`: one at a time; `batched`: all together) and flag anomalies.

    A label is flagged when its mask norm is below the median and its anomaly index exceeds `threshold`.
    """
    t0 = time.perf_counter()
    labels = list(range(num_classes))
    if mode == "batched":
        inversions = invert(model, images, labels, settings, generator, device)
    elif mode == "loop":
        inversions = [invert(model, images, [t], settings, generator, device)[0] for t in labels]
    else:
        raise ValueError(f"unknown inversion mode {mode!r}; allowed: loop, batched")
    indices = anomaly_indices(np.array([inv.norm for inv in inversions]), log=log_norms)
    flagged = [int(t) for t in np.argsort(-indices) if indices[t] > threshold]
    return ScanResult(inversions, indices, flagged, time.perf_counter() - t0, mode)
