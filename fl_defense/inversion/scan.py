"""Scan every label with Neural Cleanse and flag the backdoor targets.

A label is flagged when its mask is anomalously small (MAD anomaly index above a threshold, on raw
or log norms) and, when reference models trained only on clean data are given, its inverted trigger
does not also fool them (natural features do; see `fl_defense.inversion.reference`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_defense.attacks.trigger import Trigger
from fl_defense.inversion.neural_cleanse import LabelInversion, NCSettings, anomaly_indices, invert
from fl_defense.inversion.reference import LazyRates, transfer_rates


@dataclass(frozen=True)
class DetectionRule:
    """How a label is flagged from its mask norm and, optionally, its transfer rate."""

    threshold: float = 2.0
    log_norms: bool = True
    transfer_max: float = 0.1

    def flag(self, indices: np.ndarray, transfer: Mapping[int, float] | None) -> list[int]:
        """Flagged labels, the likeliest backdoor target first: the lowest transfer rate, else the most anomalous.
        A label's transfer rate is read only when its index passes (`transfer` may compute it then).

        A natural shortcut (Fashion-MNIST's "Bag") can pass both checks beside the true target and even
        be the more anomalous (measured: transfer 0.055 and index 3.16 against the target's 0.01 and
        2.58); a backdoor's trigger is the one that least fools the clean reference model.
        """
        rates: Mapping[int, float] = dict.fromkeys(range(len(indices)), 0.0) if transfer is None else transfer
        passed = [t for t in range(len(indices)) if indices[t] > self.threshold and rates[t] <= self.transfer_max]
        return sorted(passed, key=lambda t: (rates[t], -indices[t]))


@dataclass
class ScanResult:
    """Per-label mask norms, anomaly indices, transfer rates, the flagged labels, and timing."""

    inversions: list[LabelInversion]
    indices: np.ndarray
    transfer: LazyRates | None
    flagged: list[int]
    seconds: float
    mode: str

    @property
    def norms(self) -> list[float]:
        return [inv.norm for inv in self.inversions]

    def trigger_for(self, label: int) -> Trigger | None:
        """The trigger this scan inverted for `label`; None if it never reached the success threshold."""
        inv = self.inversions[label]
        return Trigger(pattern=inv.pattern, mask=inv.mask, alpha=1.0) if inv.reached else None

    def record(self) -> dict[str, Any]:
        """JSON-able summary for results.json."""
        return {
            "inversion_mode": self.mode,
            "flagged": self.flagged,
            "mask_l1": [round(v, 3) for v in self.norms],
            "anomaly_index": [round(float(v), 3) for v in self.indices],
            "transfer": None if self.transfer is None else self.transfer.computed(),
            "inversion_epochs": [inv.epochs for inv in self.inversions],
            "inversion_seconds": self.seconds,
        }


def scan(model: nn.Module, images: torch.Tensor, num_classes: int, *, mode: str, settings: NCSettings,
         rule: DetectionRule, generator: torch.Generator, device: torch.device,
         references: list[nn.Module] | None = None,
         reference_data: tuple[torch.Tensor, torch.Tensor] | None = None,
         num_gpus: float = 0.0) -> ScanResult:
    """Invert every label and flag the targets.

    `loop`: one label at a time; `ray`: the same per-label runs as Ray tasks (`num_gpus` each);
    `batched`: all labels in one optimisation. Each label of `loop` and `ray` has its own seed,
    so the two give the same result.
    """
    t0 = time.perf_counter()
    labels = list(range(num_classes))
    base = int(torch.randint(2**31 - 1, (1,), generator=generator))
    seeds = [base + 7919 * t for t in labels]
    if mode == "batched":
        inversions = invert(model, images, labels, settings, generator, device)
    elif mode == "loop":
        inversions = [invert(model, images, [t], settings, torch.Generator().manual_seed(s), device)[0]
                      for t, s in zip(labels, seeds, strict=True)]
    elif mode == "ray":
        from fl_defense.inversion.ray_scan import invert_on_ray

        inversions = invert_on_ray(model, images, labels, seeds, settings, num_gpus)
    else:
        raise ValueError(f"unknown inversion mode {mode!r}; allowed: loop, batched, ray")
    indices = anomaly_indices(np.array([inv.norm for inv in inversions]), log=rule.log_norms)
    transfer = None
    if references and reference_data is not None:
        transfer = transfer_rates(references, inversions, *reference_data, device)
    return ScanResult(inversions, indices, transfer, rule.flag(indices, transfer), time.perf_counter() - t0, mode)
