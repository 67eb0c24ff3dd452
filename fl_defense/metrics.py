"""BA and ASR: clean accuracy, and the share of non-target images a trigger sends to the target."""

from __future__ import annotations

import torch
from torch import nn

from fl_defense.attacks.base import Attack
from fl_defense.attacks.trigger import Trigger
from fl_defense.data import to_float


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
            trigger: Trigger | None = None) -> torch.Tensor:
    """Predicted labels for uint8 (or [0,1] float) images, optionally stamped with a trigger first."""
    model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = (to_float(x) if x.dtype == torch.uint8 else x).to(device)
        if trigger is not None:
            x = trigger.apply(x)
        out.append(model(x).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
                   device: torch.device = torch.device("cpu")) -> float:
    """BA: accuracy on the clean test set."""
    return (predict(model, images, batch_size, device) == labels).float().mean().item()


def attack_success_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, trigger: Trigger,
                        target: int, batch_size: int = 1000, device: torch.device = torch.device("cpu")) -> float:
    """ASR: among test images whose true label is not the target, the share classified as the target once triggered."""
    keep = labels != target
    if not keep.any():
        return float("nan")
    pred = predict(model, images[keep], batch_size, device, trigger)
    return (pred == target).float().mean().item()


def ba_asr(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack, batch_size: int,
           device: torch.device) -> tuple[float, float]:
    """BA and ASR of a model on a test set for an attack's trigger and target."""
    return (clean_accuracy(model, images, labels, batch_size, device),
            attack_success_rate(model, images, labels, attack.trigger, attack.target, batch_size, device))
