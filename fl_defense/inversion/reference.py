"""A reference model trained only on the server's clean set, to tell backdoors from natural features.

Some labels need only a small mask in any model (on Fashion-MNIST a bag-like blob turns most
images into "Bag"); MAD on mask norms flags them on clean models too. Such natural-feature triggers
transfer to a model that never saw poisoned data, a backdoor trigger does not: the share of clean
images a label's inverted trigger sends to that label on the reference model is its transfer rate.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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
    """A trigger source's reference model: trained on the clean set by the first call that needs it, then kept
    (in the source's state) for every later call of the run, since it depends only on the clean set."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.model: nn.Module | None = None

    def get(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
            device: torch.device) -> nn.Module | None:
        """The reference model (`model`'s architecture), or None when the check is off (0 epochs)."""
        if self.model is None and self.epochs > 0:
            self.model = train_reference(model, images, labels, self.epochs, generator, device)
        return self.model

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return None if self.model is None else self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor] | None, model: nn.Module) -> None:
        self.model = None
        if state is not None:
            self.model = fresh_copy(model, 0)
            self.model.load_state_dict(state)
            self.model.eval()


@torch.inference_mode()
def transfer_rates(reference: nn.Module, inversions: list[LabelInversion], images: torch.Tensor,
                   labels: torch.Tensor, device: torch.device, batch_size: int = 500) -> np.ndarray:
    """For each label t: the share of clean images of other labels the reference model calls t once stamped."""
    reference = reference.to(device).eval()
    rates = []
    for inv in inversions:
        keep = labels != inv.label
        x = images[keep]
        hits = 0
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device)
            stamped = (1 - inv.mask.to(device)) * xb + inv.mask.to(device) * inv.pattern.to(device)
            hits += int((reference(stamped).argmax(1) == inv.label).sum())
        rates.append(hits / max(len(x), 1))
    return np.array(rates)
