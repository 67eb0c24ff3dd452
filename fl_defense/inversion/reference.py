"""Reference models trained only on the server's clean set, to tell backdoors from natural features.

Some labels need only a small mask in any model (on Fashion-MNIST a bag-like blob turns most
images into "Bag"); MAD on mask norms flags them on clean models too. Such natural-feature triggers
transfer to a model that never saw poisoned data, a backdoor trigger does not: the share of clean
images a label's inverted trigger sends to that label on a reference model is its transfer rate.

A label's transfer rate is the mean over `nc-references` reference models (3 by default), each with its own
initialisation and data order. One reference is a noisy judge: on the central seed-1 models of the detection
benchmark (benchmarks/README.md) the one reference of each scan let Bag's inverted trigger through at 0.005-0.13,
so Bag was flagged on 9 of the 11 models (the clean one among them) and came before the target on two. Measured
after (exploratory, four references of other seeds, 5 epochs each): on seed 1's clean model they took Bag's trigger
at 0.34-0.49; on BadNets and Blended of seeds 0 and 1 and WaNet of seed 0 the target's NC trigger fooled each of
them at most 0.028 while Bag's fooled them 0.03-0.84, and on the one model where Bag's mean of three stayed under
the 0.1 check (BadNets seed 1: 0.082) the target's (0.002) still came first. Three references cost three times the
reference training (about 2 s each on the small CNN, once per run).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.attacks.trigger import Stamp, Trigger
from fl_defense.inversion.neural_cleanse import LabelInversion


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with freshly initialised weights (and BatchNorm statistics), seeded."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    for p in fresh.parameters():
        p.requires_grad_(True)
    return fresh


def train_reference(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                    generator: torch.Generator, device: torch.device) -> nn.Module:
    """Train a fresh copy of `model`'s architecture on the clean set (float images in [0, 1])."""
    ref = fresh_copy(model, int(torch.randint(2**31 - 1, (1,), generator=generator))).to(device).train()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=generator).split(64):
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(ref(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ref.eval()


class CleanReference:
    """A trigger source's reference models: trained on the clean set by the first call that needs them, then kept
    (in the source's state) for every later call of the run, since they depend only on the clean set."""

    def __init__(self, epochs: int, count: int = 1) -> None:
        self.epochs = epochs
        self.count = count
        self.models: list[nn.Module] = []

    def get(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
            device: torch.device) -> list[nn.Module]:
        """The reference models (`model`'s architecture); none when the check is off (0 epochs)."""
        if not self.models and self.epochs > 0:
            self.models = [train_reference(model, images, labels, self.epochs, generator, device)
                           for _ in range(self.count)]
        return self.models

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return [m.state_dict() for m in self.models]

    def load_state_dict(self, state: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor] | None,
                        model: nn.Module) -> None:
        """Restore `state_dict`; a checkpoint of a run that kept one reference holds its state dict alone."""
        states = [] if state is None else [state] if isinstance(state, dict) else state
        self.models = [fresh_copy(model, 0) for _ in states]
        for ref, ref_state in zip(self.models, states, strict=True):
            ref.load_state_dict(ref_state)
            ref.eval()


def mean_rate(references: list[nn.Module], rate: Callable[[nn.Module], float]) -> float:
    """`rate` averaged over the reference models (0 without any: no check)."""
    return sum(rate(ref) for ref in references) / len(references) if references else 0.0


@torch.inference_mode()
def label_share(model: nn.Module, stamp: Stamp, images: torch.Tensor, labels: torch.Tensor, label: int,
                device: torch.device, batch_size: int = 500) -> float:
    """The share of the clean images of other labels that `model` classifies as `label` once stamped: on the scanned
    model, how well a trigger inverted toward `label` works; on a reference model, how natural it is."""
    model = model.to(device).eval()
    x = images[labels != label]
    hits = sum(int((model(stamp.apply(x[s:s + batch_size].to(device))).argmax(1) == label).sum())
               for s in range(0, len(x), batch_size))
    return hits / max(len(x), 1)


def flag_by_excess(shares: Sequence[float], transfer: Mapping[int, float] | Sequence[float],
                   excess_min: float) -> tuple[list[int], list[float | None]]:
    """The labels whose share exceeds their transfer rate by at least `excess_min`, lowest transfer first (the
    rule of every scan), and each label's excess (None where the share alone rules the label out: a transfer rate
    is never negative, so its rate is not read). The warp and blend scans flag by it."""
    excess: list[float | None] = [s - transfer[t] if s >= excess_min else None for t, s in enumerate(shares)]
    passed = [t for t, e in enumerate(excess) if e is not None and e >= excess_min]
    return sorted(passed, key=lambda t: (transfer[t], -shares[t])), excess


@dataclass
class ExcessJudgement:
    """What a fixed-budget scan (warp, blend) saw: each label's share on the model, the transfer rates (read lazily),
    the flagged labels, each label's excess and the labels whose trigger works on the model (share at the bar)."""

    shares: list[float]
    transfer: LazyRates
    flagged: list[int]
    excess: list[float | None]
    works: list[int]


def judge_by_excess(model: nn.Module, stamps: Sequence[Stamp], images: torch.Tensor, labels: torch.Tensor,
                    references: list[nn.Module], excess_min: float, device: torch.device) -> ExcessJudgement:
    """Label t's stamp `stamps[t]` judged by `flag_by_excess`: its share on `model` against its transfer rate."""
    shares = [label_share(model, s, images, labels, t, device) for t, s in enumerate(stamps)]
    transfer = LazyRates(lambda t: mean_rate(references, lambda ref: label_share(ref, stamps[t], images, labels, t,
                                                                                 device)), len(stamps))
    flagged, excess = flag_by_excess(shares, transfer, excess_min)
    return ExcessJudgement(shares, transfer, flagged, excess, [t for t, e in enumerate(excess) if e is not None])


class LazyRates(Mapping[int, float]):
    """Per-label transfer rates, each computed when first read and then kept. A rate costs a pass of every reference
    model over the clean set, and a scan reads it only for the labels that pass its own test (an NC mask anomalously
    small, a warp that moves enough images), and a combined scan for the labels some part flagged. Measured in one
    process on three central models of the detection benchmark (Blended seed 2, BadNets seed 0, seed 0's clean model):
    after the default `nc+warp` scan, reading the rates it had left unread took 10.5-15.4 s, against 32-41 s for the
    scan itself (NC part 5.4-7.2 s of them, warp part 5.1-8.7 s)."""

    def __init__(self, rate: Callable[[int], float], labels: int) -> None:
        self._rate, self._labels = rate, labels
        self._known: dict[int, float] = {}

    def __getitem__(self, label: int) -> float:
        if not 0 <= label < self._labels:
            raise KeyError(label)
        if label not in self._known:
            self._known[label] = float(self._rate(label))
        return self._known[label]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._labels))

    def __len__(self) -> int:
        return self._labels

    def computed(self) -> list[float | None]:
        """Each label's rate if it was read (None if not), rounded, for a record."""
        return [round(self._known[t], 3) if t in self._known else None for t in range(self._labels)]


def transfer_rates(references: list[nn.Module], inversions: list[LabelInversion], images: torch.Tensor,
                   labels: torch.Tensor, device: torch.device) -> LazyRates:
    """For each label t (read lazily): the share of clean images of other labels the reference models call t once
    stamped with t's inverted trigger, averaged over the references."""
    return LazyRates(lambda t: mean_rate(references, lambda ref: label_share(
        ref, Trigger(inversions[t].pattern, inversions[t].mask), images, labels, inversions[t].label, device)),
        len(inversions))
