"""Local training on an index slice of a shared uint8 image tensor (no DataLoader, no copies)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.data import to_float
from fl_defense.errors import ConfigError

BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelHook = Callable[[nn.Module], None]


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; an explicit CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {name!r} asked for, but CUDA is not available; allowed: auto, cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision for the forward pass: float16 on CUDA (with a GradScaler in training), bfloat16 on CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def train_local(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
                epochs: int, batch_size: int, lr: float, momentum: float, weight_decay: float,
                generator: torch.Generator, device: torch.device, batch_hook: BatchHook | None = None,
                loss_fn: LossFn = F.cross_entropy, grad_hook: ModelHook | None = None,
                step_hook: ModelHook | None = None, amp: bool = False) -> float:
    """SGD over `images[indices]` for `epochs`; `batch_hook` may rewrite each batch (poisoning).

    `loss_fn(logits, labels)` is the minimised objective (a training-time defense may change it).
    An attacker shapes its update with `grad_hook` (after backward, before the step: mask or add to
    the gradients) and `step_hook` (after the step: project the weights). Returns the loss's mean
    over all batches. The shuffling comes from `generator`, so the same seed gives the same run.
    With `amp` the forward pass runs in mixed precision; on CUDA the loss is scaled and the gradients
    are unscaled before `grad_hook`, so hooks always see true gradients. Weights stay float32.
    """
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    total, batches = 0.0, 0
    for _ in range(epochs):
        order = indices[torch.randperm(len(indices), generator=generator)]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            x, y = to_float(images[idx]), labels[idx]
            if batch_hook is not None:
                x, y = batch_hook(x, y, generator)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if grad_hook is not None:
                grad_hook(model)
            scaler.step(opt)
            scaler.update()
            if step_hook is not None:
                step_hook(model)
            total += loss.item()
            batches += 1
    return total / max(batches, 1)
