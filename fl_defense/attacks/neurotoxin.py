"""Neurotoxin (Zhang et al., ICML 2022): a durable backdoor in the coordinates benign clients rarely change.

Benign clients' updates are approximated by the change of the global model since the attacker last
saw it (the paper's proxy; kept in the client's memory between its rounds). The `neurotoxin-top-k`
share of coordinates with the largest such change, over all trainable parameters together, is
masked: the attacker's gradient there is zeroed every step, weight decay included (applied here,
before the mask, instead of by the optimiser), so those coordinates leave its update untouched and
the backdoor sits where later benign training will not overwrite it. In a client's first round the
proxy is its own gradient on a few clean local batches, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F

from fl_defense.attacks.attacker import AttackerTraining, Memory, Shaping, trainable_anchor
from fl_defense.data.datasets import to_float
from fl_defense.registry import ATTACKER_TRAININGS, between

PREFIX = "neurotoxin."
CLEAN_BATCHES = 4


def top_k_mask(proxy: Mapping[str, torch.Tensor], top_k: float) -> dict[str, torch.Tensor]:
    """1 where the attacker may update, 0 on the `top_k` share (at least one) of coordinates with the
    largest |proxy|, ranked over all tensors together."""
    flat = torch.cat([v.detach().abs().flatten() for v in proxy.values()])
    k = max(1, int(round(top_k * flat.numel())))
    keep = torch.ones_like(flat)
    keep[flat.topk(k).indices] = 0
    masks, start = {}, 0
    for name, v in proxy.items():
        masks[name] = keep[start:start + v.numel()].view_as(v)
        start += v.numel()
    return masks


def clean_gradient(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                   batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The summed cross-entropy gradient of a few clean local batches (the first-round proxy)."""
    model.zero_grad(set_to_none=True)
    for start in range(0, min(len(indices), CLEAN_BATCHES * batch_size), batch_size):
        idx = indices[start:start + batch_size]
        F.cross_entropy(model(to_float(images[idx]).to(device)), labels[idx].to(device)).backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@ATTACKER_TRAININGS.register("neurotoxin", options=[
    between("neurotoxin-top-k", 0.01, "neurotoxin: share of coordinates, those the benign updates change most, that "
            "the attacker leaves untouched (the authors' runs: 0.01-0.05; 0.05 plants 0.89 in 20 rounds of the "
            "default setting, 0.01 0.94)", 0, 1, "()"),
], summary="Neurotoxin (Zhang et al. 2022): only the coordinates benign updates change least are updated")
class Neurotoxin(AttackerTraining):

    def shaping(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, indices: torch.Tensor, device: torch.device, memory: Memory) -> Shaping:
        current = trainable_anchor(model, global_state, device)
        if all(PREFIX + n in memory for n in current):
            proxy = {n: current[n] - memory[PREFIX + n].to(device) for n in current}
        else:
            proxy = clean_gradient(model, images, labels, indices, self.cfg["batch-size"], device)
        mask = top_k_mask(proxy, float(self.cfg["neurotoxin-top-k"]))
        wd = float(self.cfg["weight-decay"])

        @torch.no_grad()
        def masked(m: torch.nn.Module) -> None:
            for n, p in m.named_parameters():
                if p.grad is not None:
                    p.grad.add_(p, alpha=wd).mul_(mask[n])

        return Shaping(grad_hook=masked, weight_decay=0.0)

    def observe(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], memory: Memory) -> None:
        for n, _ in model.named_parameters():
            memory[PREFIX + n] = global_state[n].detach().cpu().clone()
