"""PGD (Sun et al. 2019, "Can you really backdoor federated learning?"): local training projected,
after every step, onto an L2 ball of radius `pgd-eps` around the global model, so that the update
passes a norm-bounding server while the backdoor is trained within the bound from the start."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fl_defense.attacks.attacker import AttackerTraining, Memory, Shaping, register, trainable_anchor


@torch.no_grad()
def project_l2(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], eps: float) -> float:
    """Scale (params - anchor) in place to L2 norm at most `eps`, over all tensors together; the norm before."""
    norm = torch.sqrt(sum(((p - anchor[n]).double() ** 2).sum() for n, p in params.items()))
    if norm > eps:
        scale = (eps / norm).item()
        for n, p in params.items():
            p.copy_(anchor[n] + (p - anchor[n]) * scale)
    return float(norm)


@register
class PGD(AttackerTraining):
    name = "pgd"

    def shaping(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, indices: torch.Tensor, device: torch.device, memory: Memory) -> Shaping:
        anchor = trainable_anchor(model, global_state, device)
        eps = float(self.cfg["pgd-eps"])

        def project(m: torch.nn.Module) -> None:
            project_l2(dict(m.named_parameters()), anchor, eps)

        return Shaping(step_hook=project)
