"""`inversion=nc`: the Neural Cleanse scan of every label (Wang et al., S&P 2019), the default trigger source.

Every label gets its own mask-and-pattern inversion (`fl_defense.inversion.neural_cleanse`, with this
project's early-stopped budget by default); a label is flagged when its mask is anomalously small (MAD on
log norms) and its inverted trigger does not also fool models trained only on the clean set, which natural
features do and backdoors do not (`fl_defense.inversion.reference`; the detection rates that chose these
defaults are in benchmarks/README.md). The reference models are trained once per run and kept as state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.attacks.trigger import Trigger
from fl_defense.inversion.base import Finding, TriggerSource
from fl_defense.inversion.budget import inversion_images, nc_settings
from fl_defense.inversion.neural_cleanse import invert
from fl_defense.inversion.scan import DetectionRule, scan
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet
from fl_defense.registry import TRIGGER_SOURCES, between, choice, non_negative, positive


def detection_rule(cfg: Mapping[str, Any]) -> DetectionRule:
    return DetectionRule(threshold=cfg["nc-threshold"], log_norms=cfg["nc-statistic"] == "log",
                         transfer_max=cfg["nc-transfer-max"])


@TRIGGER_SOURCES.register("nc", options=[
    choice("inversion-mode", "loop", "trigger inversion: loop (one label at a time, best on CPU), batched (all labels "
           "in one pass, for a GPU), or ray (labels as Ray tasks, for several GPUs)", ("loop", "batched", "ray")),
    non_negative("inversion-num-gpus", 0.0, "GPU fraction of each Ray inversion task (inversion-mode=ray)"),
    choice("nc-budget", "fast", "inversion budget: fast (early-stopped, on nc-images images) or reference "
           "(BackdoorBench's 80 passes per label over the whole clean set)", ("fast", "reference")),
    positive("nc-epochs", 10, "fast budget: passes per label over the inversion images"),
    non_negative("nc-images", 1000, "fast budget: clean images used for inversion (0: all)"),
    positive("nc-threshold", 2.0, "MAD anomaly index above which a label is flagged"),
    choice("nc-statistic", "log", "anomaly index on raw or log mask norms", ("raw", "log")),
    non_negative("nc-reference-epochs", 5, "epochs of the clean-set reference models that reject natural-feature "
                 "triggers (0: no reference check)"),
    positive("nc-references", 3, "clean-set reference models; a trigger's transfer rate is its mean over them"),
    between("nc-transfer-max", 0.1, "a label is flagged only if its inverted trigger fools the reference models on "
            "at most this share of clean images (their mean)", 0, 1),
], summary="Neural Cleanse scan of every label, MAD on log mask norms, and the clean reference models' transfer check")
class NeuralCleanseScan(TriggerSource):
    def find(self, model: BackdoorModel, clean: CleanSet, num_classes: int, device: torch.device,
             generator: torch.Generator) -> Finding:
        cfg = self.cfg
        t0 = time.perf_counter()
        references = self.reference.get(model, clean.x, clean.y, generator, device)
        result = scan(model, inversion_images(clean.x, cfg, generator), num_classes, mode=cfg["inversion-mode"],
                      settings=nc_settings(cfg), rule=detection_rule(cfg), generator=generator, device=device,
                      references=references, reference_data=(clean.x, clean.y),
                      num_gpus=cfg["inversion-num-gpus"])
        result.seconds = time.perf_counter() - t0
        triggers = {label: t for label in range(num_classes) if (t := result.trigger_for(label)) is not None}
        return Finding(result.flagged, triggers, result.record(), result.transfer)


def invert_label(model: BackdoorModel, clean: CleanSet, label: int, cfg: Mapping[str, Any],
                 generator: torch.Generator, device: torch.device) -> Trigger | None:
    """Neural Cleanse's mask and pattern for one label already known to be a target, with the scan's budget (no
    anomaly test: the label is not in question, only its trigger); None when no mask reached the success rate."""
    inv = invert(model, inversion_images(clean.x, cfg, generator), [label], nc_settings(cfg), generator, device)[0]
    return Trigger(pattern=inv.pattern, mask=inv.mask, alpha=1.0) if inv.reached else None
