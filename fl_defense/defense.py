"""The server-side defense pipeline: find the trigger (when the purifier needs one), purify, measure.

Pure in the sense of the project: a model and tensors in, a model and a JSON-able record out; scheduling,
logging and files stay with the callers (the ServerApp's scheduled rounds and `fl-defense purify`, which
share this one `Defender`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fl_defense.attacks.trigger import Stamp, mix, stamp_from_state
from fl_defense.config import schedule_rounds
from fl_defense.data import ImageData, split_for, to_float
from fl_defense.inversion.base import Finding, TriggerSource
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, Purifier, build_purifier
from fl_defense.registry import TRIGGER_SOURCES


@dataclass(frozen=True)
class FoundTrigger:
    """The trigger a purifier gets: the stamp, the labels it stands for, and where it came from."""

    stamp: Stamp
    labels: list[int]
    source: str


class TriggerStage:
    """Finding the trigger, a stage of the pipeline: a trigger source, and what a run remembers of its findings.

    A scan that flags several labels purifies with the trigger of each, taking turns over the stamped images: the
    scan cannot tell the target from a natural feature flagged beside it, and the likeliest label is not always
    the target (BadNets, seed 1 of the defense table: Bag's index 5.37, the target's 5.04; purifying with Bag's
    trigger alone left ASR 0.094 after MCL and 0.18 after NC unlearning, with both 0.010 and 0.015, at BA 0.8972
    against 0.8982 and 0.9054 against 0.9052).

    Every label the source has flagged is kept, with its latest trigger, for the calls whose source flags
    nothing (defense every k rounds): under continuous training a backdoor that was removed is re-planted by
    the same attackers, and while it is only partly re-learned its inverted mask is not yet small enough to
    be flagged. Such a call purifies with each remembered trigger and, where this call's inversion of its
    label succeeded, that re-inversion too, taking turns over the stamped images: the re-planted backdoor
    can answer to the old trigger or, after a purification taught the model to ignore that one, to other
    features of the attackers' trigger, which the re-inversion finds even when its mask is no smaller than
    other labels' (Blended, MCL every 5 rounds, round 15: remembered trigger alone 0.71 -> 0.25, with the
    re-inversion 0.71 -> 0.011). All flagged labels are kept, not the last, and a call that flags a label purifies
    with the remembered ones too: a natural feature flagged once (Fashion-MNIST's "Bag", when the fading backdoor
    no longer was) must not make the defense forget the target. Until 2026-12-06 a call that flagged anything
    purified with this call's flags alone: BadNets with PGD attackers, MCL every 5 rounds (defense table, seed 0),
    round 20 flagged Bag only, and ASR went 0.853 -> 0.324 where the remembered target's trigger had taken it
    0.471 -> 0.014 in round 15.
    """

    def __init__(self, source: TriggerSource) -> None:
        self.source = source
        self.found: dict[int, tuple[Stamp, int]] = {}  # label -> (trigger, call that flagged it)
        self.calls = 0

    def __call__(self, model: BackdoorModel, clean: CleanSet, num_classes: int, device: torch.device,
                 generator: torch.Generator) -> tuple[FoundTrigger | None, dict[str, Any]]:
        """The trigger to purify with (None: nothing found now or before), and the record of the finding."""
        self.calls += 1
        finding = self.source.find(model, clean, num_classes, device, generator)
        found = self._choose(finding)
        return found, {**finding.record, "trigger_source": found.source if found else None,
                       "purified_labels": found.labels if found else []}

    def _choose(self, finding: Finding) -> FoundTrigger | None:
        flagged = [label for label in finding.flagged if label in finding.triggers]
        for label in flagged:
            self.found[label] = (finding.triggers[label], self.calls)
        stamps = [finding.triggers[label] for label in flagged]
        labels = list(flagged)
        sources = ["scan"] if flagged else []
        for label, (remembered, call) in self.found.items():
            if label in flagged:
                continue
            current = finding.triggers.get(label)
            stamps += [remembered] if current is None else [remembered, current]
            labels.append(label)
            sources.append(f"label {label} of defense call {call}: its trigger"
                           + ("" if current is None else " and this scan's re-inversion"))
        if not stamps:
            return None
        return FoundTrigger(mix(stamps), labels, "; ".join(sources))

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers, for a checkpoint that `torch.load(weights_only=True)` can read."""
        found = [{"label": label, "call": call, "stamp": stamp.state_dict()}  # type: ignore[attr-defined]
                 for label, (stamp, call) in self.found.items()]
        return {"source": self.source.state_dict(), "found": found, "calls": self.calls}

    def load_state_dict(self, state: Mapping[str, Any], model: BackdoorModel) -> None:
        self.source.load_state_dict(state["source"], model)
        self.found = {int(e["label"]): (stamp_from_state(e["stamp"]), int(e["call"])) for e in state["found"]}
        self.calls = int(state["calls"])


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
    """Rounds after whose aggregation the purifier runs: the last one (`end`) or every k-th."""
    if cfg["defense"] == "none" or cfg["defense-schedule"] == "continuous":
        return []
    spec = cfg["defense-schedule"]
    return [cfg["rounds"]] if spec == "end" else schedule_rounds(spec, cfg["rounds"])


class Defender:
    """The configured defense of a run: its purifier and, when that needs a trigger, the trigger stage.

    Calling it on a model finds the trigger on the server's clean set, purifies, and measures BA/ASR before and
    after with `evaluate` (the run's `Evaluator`); pass the same Defender on every call of a run, so that the
    stage's memory carries over.
    """

    def __init__(self, cfg: Mapping[str, Any], clean: CleanSet, num_classes: int, device: torch.device,
                 evaluate: Callable[[BackdoorModel], tuple[float, float]]) -> None:
        self.cfg, self.clean, self.num_classes, self.device, self.evaluate = cfg, clean, num_classes, device, evaluate
        self.purifier: Purifier = build_purifier(cfg)
        source = self.purifier.trigger_source()
        self.stage = None if source is None else TriggerStage(TRIGGER_SOURCES[source](cfg))

    def __call__(self, model: BackdoorModel, generator: torch.Generator, stamp: Stamp | None = None) -> DefenseOutcome:
        """Defend `model`; with `stamp`, purify with it instead of finding the trigger (no scan)."""
        ba0, asr0 = self.evaluate(model)
        record: dict[str, Any] = {"defense": self.cfg["defense"], "purified": False, "inversion_seconds": 0.0}
        purified, seconds = self._purify(model, generator, record, stamp)
        ba1, asr1 = (ba0, asr0) if purified is model else self.evaluate(purified)
        record.update(purify_seconds=seconds, ba_before=ba0, asr_before=asr0, ba_after=ba1, asr_after=asr1)
        if "flagged" in record:
            record["true_target_found"] = (self.cfg["attack"] != "none"
                                           and record["flagged"][:1] == [self.cfg["target-label"]])
        return DefenseOutcome(purified, record)

    def _purify(self, model: BackdoorModel, generator: torch.Generator, record: dict[str, Any],
                stamp: Stamp | None) -> tuple[BackdoorModel, float]:
        """The purified model (the input model itself when there was no trigger to purify with) and its seconds."""
        if stamp is None and self.stage is not None:
            found, finding = self.stage(model, self.clean, self.num_classes, self.device, generator)
            record.update(finding)
            if found is None:
                return model, 0.0
            stamp = found.stamp
        t0 = time.perf_counter()
        purified = self.purifier.apply(model, self.clean, stamp, self.device, generator)
        record.update(purified=True, **self.purifier.report())
        return purified, time.perf_counter() - t0

    def known(self) -> dict[int, Stamp]:
        """Every label flagged so far in the run, with its latest trigger (empty without a trigger stage)."""
        return {} if self.stage is None else {label: stamp for label, (stamp, _) in self.stage.found.items()}

    def references(self) -> list[torch.nn.Module]:
        """The trigger source's clean reference models (trained only on the clean set), once they exist."""
        return [] if self.stage is None else self.stage.source.reference.models

    def scan(self, model: BackdoorModel, generator: torch.Generator) -> Finding:
        """Scan a model for a trigger without purifying it or remembering what it flagged (`remember` does)."""
        assert self.stage is not None, "scan needs a purifier that takes a trigger"
        return self.stage.source.find(model, self.clean, self.num_classes, self.device, generator)

    def remember(self, label: int, stamp: Stamp) -> None:
        """Make (label, trigger) known, as a flag of a defense call is."""
        assert self.stage is not None, "remember needs a purifier that takes a trigger"
        self.stage.calls += 1
        self.stage.found[label] = (stamp, self.stage.calls)

    def refresh(self, label: int, stamp: Stamp) -> None:
        """Replace a known label's trigger by a better copy, keeping the call that flagged the label."""
        assert self.stage is not None and label in self.stage.found, "refresh needs a known label"
        self.stage.found[label] = (stamp, self.stage.found[label][1])

    def purify_known(self, model: BackdoorModel, generator: torch.Generator) -> DefenseOutcome:
        """Purify with every known trigger (taking turns over the images), no scan; measured as `__call__` is."""
        known = self.known()
        stamps = list(known.values())
        outcome = self(model, generator, mix(stamps))
        outcome.record.update(trigger_source="known", purified_labels=list(known))
        return outcome

    def state_dict(self) -> dict[str, Any]:
        return {} if self.stage is None else self.stage.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], model: BackdoorModel) -> None:
        if self.stage is not None and state:
            self.stage.load_state_dict(state, model)
