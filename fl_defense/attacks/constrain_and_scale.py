"""Constrain-and-scale (Bagdasaryan et al., AISTATS 2020, "How to backdoor federated learning").

The attacker minimises alpha * L_class + (1 - alpha) * L_ano, where the anomaly term is the L2
distance of its model to the global one (the statistic a distance-based server would check), so the
backdoored model stays close to the global model; it then scales its update by gamma (`cs-gamma`,
model replacement: gamma = clients per round / server learning rate replaces the global model; with
several attackers each scales by that over their number, so that together they replace it), times
`boost`, and `norm-bound` can cap the scaled update. `cs-alpha` 1 turns the anomaly term off;
`cs-gamma` 1 leaves the update unscaled.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fl_defense.attacks.attacker import AttackerTraining, Memory, Shaping, anchored
from fl_defense.config import expected_malicious
from fl_defense.registry import ATTACKER_TRAININGS, between, non_negative


@torch.no_grad()
def add_anomaly_gradient(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor],
                         alpha: float) -> None:
    """Turn each parameter's gradient g of L_class into that of alpha * L_class + (1 - alpha) * ||w - w_g||.

    The distance's gradient is (w - w_g) / ||w - w_g|| over all parameters together (0 at w = w_g).
    """
    norm = torch.sqrt(sum(((p - anchor[n]) ** 2).sum() for n, p in params.items()))
    for n, p in params.items():
        if p.grad is None:
            continue
        p.grad.mul_(alpha)
        if norm > 0:
            p.grad.add_((p - anchor[n]) / norm, alpha=1 - alpha)


@ATTACKER_TRAININGS.register("constrain-and-scale", options=[
    between("cs-alpha", 0.7, "constrain-and-scale: weight alpha of the classification loss; 1 - alpha weighs the L2 "
            "distance to the global model (1: no anomaly term)", 0, 1, "(]"),
    non_negative("cs-gamma", 0.0, "constrain-and-scale: the attackers' update scale gamma (model replacement), times "
                 "boost; 0: clients-per-round / malicious expected per round (the paper's n / eta with eta 1, shared "
                 "by the attackers)"),
], summary="constrain-and-scale (Bagdasaryan et al. 2020): an anomaly-evasion loss, then the update scaled by gamma")
class ConstrainAndScale(AttackerTraining):

    def scale(self) -> float:
        gamma = self.cfg["cs-gamma"] or self.cfg["clients-per-round"] / max(1, expected_malicious(self.cfg))
        return float(gamma) * float(self.cfg["boost"])

    def shaping(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, indices: torch.Tensor, device: torch.device, memory: Memory) -> Shaping:
        alpha = float(self.cfg["cs-alpha"])
        return Shaping(grad_hook=anchored(model, global_state, device, lambda p, a: add_anomaly_gradient(p, a, alpha)))
