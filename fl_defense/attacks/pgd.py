"""PGD (Sun et al. 2019, "Can you really backdoor federated learning?"): local training projected,
after every step, onto an L2 ball of radius `pgd-eps` around the global model, so that the update
passes a norm-bounding server while the backdoor is trained within the bound from the start."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fl_defense.attacks.attacker import AttackerTraining, Memory, Shaping, anchored
from fl_defense.registry import ATTACKER_TRAININGS, positive


@torch.no_grad()
def project_l2(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], eps: float) -> float:
    """Scale (params - anchor) in place to L2 norm at most `eps`, over all tensors together; the norm before."""
    norm = torch.sqrt(sum(((p - anchor[n]).double() ** 2).sum() for n, p in params.items()))
    if norm > eps:
        scale = (eps / norm).item()
        for n, p in params.items():
            p.copy_(anchor[n] + (p - anchor[n]) * scale)
    return float(norm)


@ATTACKER_TRAININGS.register("pgd", options=[
    positive("pgd-eps", 2.0, "pgd: radius of the L2 ball around the global model (trainable parameters) that every "
             "step is projected onto; benign updates of the default setting have norm ~6 in round 1 and ~2 by round "
             "20, so 2 keeps the attacker at or below the benign norms (1 plants only 0.44 in 20 rounds)"),
], summary="PGD (Sun et al. 2019): every step projected onto an L2 ball around the global model")
class PGD(AttackerTraining):

    def shaping(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, indices: torch.Tensor, device: torch.device, memory: Memory) -> Shaping:
        eps = float(self.cfg["pgd-eps"])
        return Shaping(step_hook=anchored(model, global_state, device, lambda p, a: project_l2(p, a, eps)))
