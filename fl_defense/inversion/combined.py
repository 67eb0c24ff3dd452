"""`inversion=nc+warp+blend`, the default, and `nc+warp`: several scans of one model, the same reference models.

The NC scan's mask and pattern express patches (BadNets, DBA), the warp scan's displacement fields geometric
triggers (WaNet), the blend scan's full-image patterns at a low opacity blends (Blended); none finds the others'
(benchmarks/README.md, trigger detection), so the default runs all three and a label is flagged if any flags it;
flagged labels come lowest transfer rate first, the rule every scan uses on its own (a backdoor's trigger fools the
clean reference models least), a label's rate being the lowest of its triggers' rates. The smallest of the rates of
the scans that flagged it ordered Bag (8, NC: 0.053) before a WaNet target (7, warp: 0.069) on the central seed-1
WaNet model of the detection benchmark, whose NC trigger for the target, not flagged (anomaly index 0.06),
transferred at 0.006; with the lowest of all, 24 of its 24 backdoored models without SIG are ordered target first
against 23, and none of the 9 federated models of the trigger-type table (their single-reference records) changes
order (benchmarks/README.md). A label several scans inverted is purified with all its stamps, taking turns over the
images (a purifier unlearns them all). The clean reference models are trained once and shared, so the default costs
the NC scan plus `warp-epochs` and `blend-epochs` passes per label. `nc+warp` (the default until the blend scan) is
kept selectable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from fl_defense.attacks.trigger import Stamp, mix
from fl_defense.inversion.base import Finding, TriggerSource
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet
from fl_defense.registry import TRIGGER_SOURCES


def combine(findings: list[Finding], names: list[str] | None = None) -> Finding:
    """Every label any finding flagged, lowest transfer rate first, as each scan orders its own: a label's rate is
    the smallest of every finding's trigger for it that works on the model, flagged or not (any trigger that sends
    clean images to the label on the model but not on the clean references is evidence; on the federated Blended
    model of seed 1 the blend scan's pattern for Bag, under its share bar on the model, moved 0.006 of the images on
    the references and put Bag before the target); a label's stamps mixed; the records merged, with what each part
    (`names`) flagged and its seconds under `parts`, and each flagged label's rate under `label_transfer`."""
    labels = {label for f in findings for label in f.flagged}
    transfer = {label: min((f.transfer[label] for f in findings if f.transfer is not None
                            and (f.works is None or label in f.works)), default=0.0) for label in labels}
    flagged = sorted(transfer, key=transfer.__getitem__)
    by_label: dict[int, list[Stamp]] = {}
    for f in findings:
        for label, stamp in f.triggers.items():
            by_label.setdefault(label, []).append(stamp)
    triggers = {label: mix(s) for label, s in by_label.items()}
    record: dict[str, Any] = {}
    for f in findings:
        record.update(f.record)
    record.update(flagged=flagged, inversion_seconds=sum(f.record["inversion_seconds"] for f in findings),
                  label_transfer={str(label): round(transfer[label], 3) for label in flagged})
    if names is not None:
        record["parts"] = {name: {"flagged": f.flagged, "inversion_seconds": f.record["inversion_seconds"]}
                           for name, f in zip(names, findings, strict=True)}
    return Finding(flagged, triggers, record)


class Combined(TriggerSource):
    """Several scans of one model, sharing the clean reference models: flags what any of them flags (`combine`)."""

    part_names: tuple[str, ...] = ()

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self.parts: list[TriggerSource] = [TRIGGER_SOURCES[name](cfg) for name in self.part_names]
        for part in self.parts:
            part.reference = self.reference

    def find(self, model: BackdoorModel, clean: CleanSet, num_classes: int, device: torch.device,
             generator: torch.Generator) -> Finding:
        t0 = time.perf_counter()
        finding = combine([part.find(model, clean, num_classes, device, generator) for part in self.parts],
                          list(self.part_names))
        finding.record["inversion_seconds"] = time.perf_counter() - t0  # with the rates `combine` read
        return finding

    def own_state(self) -> dict[str, Any]:
        """What each part keeps of its last call (its warm start); the shared reference models are saved once."""
        return {"parts": [part.own_state() for part in self.parts]}

    def load_own_state(self, state: Mapping[str, Any]) -> None:
        parts = state.get("parts", [])
        for i, part in enumerate(self.parts):  # a checkpoint of a scan with fewer parts warm-starts those it has
            part.load_own_state(parts[i] if i < len(parts) else {})


@TRIGGER_SOURCES.register("nc+warp", summary="the NC scan and the warp scan, the same reference models: flags what "
                          "either flags (patches and warps)")
class NCAndWarp(Combined):
    part_names = ("nc", "warp")


@TRIGGER_SOURCES.register("nc+warp+blend", summary="the default: the NC, warp and blend scans, the same reference "
                          "models: flags what any flags (patches, warps and full-image blends)")
class NCWarpAndBlend(Combined):
    part_names = ("nc", "warp", "blend")
