"""The server-side defense pipeline: trigger inversion when the purifier needs it, then purification.

Pure in the sense of the project: a model and tensors in, a model and a JSON-able record out;
evaluation, logging and scheduling stay with the caller (the ServerApp or `fl-defense purify`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fl_defense.config import schedule_rounds
from fl_defense.data import ImageData, cached_split, to_float
from fl_defense.inversion import NCSettings, scan
from fl_defense.models.base import BackdoorModel
from fl_defense.purification import CleanSet, build_purifier


@dataclass
class DefenseOutcome:
    """The model to use from now on, and what the defense found and did."""

    model: BackdoorModel
    record: dict[str, Any]


def server_clean_set(cfg: Mapping[str, Any], data: ImageData) -> CleanSet:
    """The server's held-out clean set of this run (disjoint from every client's shard)."""
    split = cached_split(cfg["dataset"], cfg["data-root"], cfg["download"], cfg["num-clients"], cfg["clean-fraction"],
                         cfg["partition"], cfg["alpha"], cfg["seed"], cfg["train-fraction"])
    idx = torch.from_numpy(split.clean)
    return CleanSet(to_float(data.train_x[idx]), data.train_y[idx])


def defense_rounds(cfg: Mapping[str, Any]) -> list[int]:
    """Rounds after whose aggregation the defense runs: the last one (`end`) or every k-th."""
    if cfg["defense"] == "none":
        return []
    spec = cfg["defense-schedule"]
    return [cfg["rounds"]] if spec == "end" else schedule_rounds(spec, cfg["rounds"])


def nc_settings(cfg: Mapping[str, Any]) -> NCSettings:
    """The inversion budget: BackdoorBench's reference, or the fast early-stopped one (the default)."""
    if cfg["nc-budget"] == "reference":
        return NCSettings()
    return NCSettings(epochs=cfg["nc-epochs"], batch_size=64, patience=2, early_stop_patience=4)


def inversion_images(clean: CleanSet, cfg: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
    """The clean images inversion runs on: all for the reference budget, else a seeded subset."""
    n = cfg["nc-images"]
    if cfg["nc-budget"] == "reference" or n == 0 or n >= len(clean.x):
        return clean.x
    return clean.x[torch.randperm(len(clean.x), generator=generator)[:n]]


def run_defense(model: BackdoorModel, clean: CleanSet, num_classes: int, cfg: Mapping[str, Any],
                device: torch.device, generator: torch.Generator) -> DefenseOutcome:
    """Invert (if needed) and purify; with no flagged label an inversion-based defense leaves the model as is."""
    purifier = build_purifier(cfg)
    record: dict[str, Any] = {"defense": cfg["defense"], "purified": False, "inversion_seconds": 0.0}
    trigger = None
    if purifier.needs_trigger:
        result = scan(model, inversion_images(clean, cfg, generator), num_classes, mode=cfg["inversion-mode"],
                      settings=nc_settings(cfg), threshold=cfg["nc-threshold"],
                      log_norms=cfg["nc-statistic"] == "log", generator=generator, device=device)
        record.update(result.record())
        trigger = result.trigger()
        if trigger is None:
            record["purify_seconds"] = 0.0
            return DefenseOutcome(model, record)
    t0 = time.perf_counter()
    purified = purifier.purify(model, clean, trigger, device, generator)
    record.update(purified=True, purify_seconds=time.perf_counter() - t0)
    return DefenseOutcome(purified, record)
