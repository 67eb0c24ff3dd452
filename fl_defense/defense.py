"""The server-side defense pipeline: trigger inversion when the purifier needs it, then purification.

Pure in the sense of the project: a model and tensors in, a model and a JSON-able record out;
evaluation, logging and scheduling stay with the caller (the ServerApp or `fl-defense purify`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_defense.attacks.trigger import Stamp, StampMix, Trigger
from fl_defense.config import schedule_rounds
from fl_defense.data import ImageData, split_for, to_float
from fl_defense.inversion import DetectionRule, ScanResult, inversion_images, nc_settings, scan, train_reference
from fl_defense.inversion.reference import fresh_copy
from fl_defense.models.base import BackdoorModel
from fl_defense.purification import CleanSet, build_purifier


@dataclass
class DefenseMemory:
    """What a run's defense keeps between calls (defense every k rounds).

    The reference model depends only on the clean set, so it is trained once. Every label a scan has
    flagged is kept, with its latest trigger, for the calls whose scan flags nothing: under continuous
    training a backdoor that was removed is re-planted by the same attackers, and while it is only
    partly re-learned its inverted mask is not yet small enough to be flagged. Such a call purifies with
    each remembered trigger and, where this scan's inversion of its label succeeded, that re-inversion
    too, taking turns over the stamped images: the re-planted backdoor can answer to the old trigger
    or, after a purification taught the model to ignore that one, to other features of the attackers'
    trigger, which the re-inversion finds even when its mask is no smaller than other labels' (Blended,
    MCL every 5 rounds, round 15: remembered trigger alone 0.71 -> 0.25, with the re-inversion 0.71 ->
    0.011). All flagged labels are kept, not the last: a natural feature flagged once (Fashion-MNIST's
    "Bag", when the fading backdoor no longer was) must not make the defense forget the target.
    """

    reference: torch.nn.Module | None = None
    found: dict[int, tuple[Trigger, int]] = field(default_factory=dict)  # label -> (trigger, call that flagged it)
    calls: int = 0

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers, for a checkpoint that `torch.load(weights_only=True)` can read."""
        found = [{"label": label, "call": call, "pattern": t.pattern, "mask": t.mask, "alpha": float(t.alpha)}
                 for label, (t, call) in self.found.items()]
        return {"reference": None if self.reference is None else self.reference.state_dict(), "found": found,
                "calls": self.calls}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], model: BackdoorModel) -> DefenseMemory:
        """The memory of `state_dict` (or of the single-trigger memory of earlier checkpoints); the reference
        model is rebuilt with `model`'s architecture."""
        reference = None
        if state["reference"] is not None:
            reference = fresh_copy(model, 0)
            reference.load_state_dict(state["reference"])
            reference.eval()
        if "found" in state:
            entries = state["found"]
        elif state.get("trigger") is not None:  # a checkpoint of the single-trigger memory
            entries = [{**state["trigger"], "label": state["trigger_label"], "call": state["trigger_call"]}]
        else:
            entries = []
        found = {int(e["label"]): (Trigger(pattern=e["pattern"], mask=e["mask"], alpha=e["alpha"]), int(e["call"]))
                 for e in entries}
        return cls(reference, found, int(state["calls"]))


@dataclass
class DefenseOutcome:
    """The model to use from now on, and what the defense found and did."""

    model: BackdoorModel
    record: dict[str, Any]


def server_clean_set(cfg: Mapping[str, Any], data: ImageData) -> CleanSet:
    """The server's held-out clean set of this run (disjoint from every client's shard)."""
    idx = torch.from_numpy(split_for(cfg).clean)
    return CleanSet(to_float(data.train_x[idx]), data.train_y[idx])


def defense_rounds(cfg: Mapping[str, Any]) -> list[int]:
    """Rounds after whose aggregation the purifier runs: the last one (`end`) or every k-th. None for
    `shadow`, which is no purifier: it acts in every round's aggregation (server/shadow.py)."""
    if cfg["defense"] in ("none", "shadow"):
        return []
    spec = cfg["defense-schedule"]
    return [cfg["rounds"]] if spec == "end" else schedule_rounds(spec, cfg["rounds"])


def detection_rule(cfg: Mapping[str, Any]) -> DetectionRule:
    return DetectionRule(threshold=cfg["nc-threshold"], log_norms=cfg["nc-statistic"] == "log",
                         transfer_max=cfg["nc-transfer-max"])


def reference_model(model: BackdoorModel, clean: CleanSet, cfg: Mapping[str, Any], device: torch.device,
                    generator: torch.Generator) -> torch.nn.Module | None:
    """The clean-set reference model of the scan, or None when the check is off (nc-reference-epochs 0)."""
    if cfg["nc-reference-epochs"] == 0:
        return None
    return train_reference(model, clean.x, clean.y, cfg["nc-reference-epochs"], generator, device)


def invert_and_flag(model: BackdoorModel, clean: CleanSet, num_classes: int, cfg: Mapping[str, Any],
                    device: torch.device, generator: torch.Generator,
                    reference: torch.nn.Module | None = None) -> tuple[ScanResult, torch.nn.Module | None]:
    """The configured scan of every label; trains the reference model unless one is passed in."""
    t0 = time.perf_counter()
    if reference is None:
        reference = reference_model(model, clean, cfg, device, generator)
    result = scan(model, inversion_images(clean.x, cfg, generator), num_classes, mode=cfg["inversion-mode"],
                  settings=nc_settings(cfg), rule=detection_rule(cfg), generator=generator, device=device,
                  reference=reference, reference_data=(clean.x, clean.y), num_gpus=cfg["inversion-num-gpus"])
    result.seconds = time.perf_counter() - t0
    return result, reference


def purification_trigger(result: ScanResult, memory: DefenseMemory) -> tuple[Stamp | None, str | None, list[int]]:
    """The trigger to purify with, where it comes from, and the labels it stands for (see `DefenseMemory`);
    a flagged label is remembered."""
    trigger = result.trigger()
    if trigger is not None:
        memory.found[result.flagged[0]] = (trigger, memory.calls)
        return trigger, "scan", result.flagged[:1]
    stamps: list[Stamp] = []
    sources = []
    for label, (remembered, call) in memory.found.items():
        current = result.trigger_for(label)
        stamps += [remembered] if current is None else [remembered, current]
        sources.append(f"label {label} of defense call {call}: its trigger"
                       + ("" if current is None else " and this scan's re-inversion"))
    if not stamps:
        return None, None, []
    return (stamps[0] if len(stamps) == 1 else StampMix(tuple(stamps))), "; ".join(sources), list(memory.found)


def run_defense(model: BackdoorModel, clean: CleanSet, num_classes: int, cfg: Mapping[str, Any],
                device: torch.device, generator: torch.Generator,
                memory: DefenseMemory | None = None) -> DefenseOutcome:
    """Invert (if needed) and purify, updating `memory` (pass the same one on every call of a run).

    An inversion-based defense whose scan flags nothing purifies with the trigger found by an earlier
    call of the run, if any (recorded as `trigger_source`); with none, it leaves the model as is.
    """
    memory = memory if memory is not None else DefenseMemory()
    memory.calls += 1
    purifier = build_purifier(cfg)
    record: dict[str, Any] = {"defense": cfg["defense"], "purified": False, "inversion_seconds": 0.0}
    trigger = None
    if purifier.needs_trigger:
        result, memory.reference = invert_and_flag(model, clean, num_classes, cfg, device, generator,
                                                   memory.reference)
        record.update(result.record())
        trigger, record["trigger_source"], record["purified_labels"] = purification_trigger(result, memory)
        if trigger is None:
            record["purify_seconds"] = 0.0
            return DefenseOutcome(model, record)
    t0 = time.perf_counter()
    purified = purifier.purify(model, clean, trigger, device, generator)
    record.update(purified=True, purify_seconds=time.perf_counter() - t0)
    record.update(purifier.report())
    return DefenseOutcome(purified, record)
