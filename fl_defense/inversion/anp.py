"""`inversion=anp`: CNP's label-free target guess (Feng et al., IEEE TIP 2025), then one NC inversion for it.

Pseudo-labels are the model's own clean predictions; one ANP step (adversarial noise on the BatchNorm
neurons' weights and biases) against them makes a backdoored model drift towards its target class, the
shortcut its neurons already hold, so the class whose prediction count grows most is the guess. The trigger
is then inverted for that label only, with the NC budget (`nc-epochs`, `nc-images`). It always names a label:
it cannot say "no backdoor". Measured here (benchmarks/README.md): it picks Fashion-MNIST's "Bag" on BadNets
and the true target on Blended.
"""

from __future__ import annotations

import time

import torch

from fl_defense.attacks.trigger import Trigger
from fl_defense.inversion.base import Finding, TriggerSource
from fl_defense.inversion.budget import inversion_images, nc_settings
from fl_defense.inversion.neural_cleanse import invert
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, frozen_copy
from fl_defense.purification.cnp import BATCH_SIZE, NeuronGates
from fl_defense.registry import TRIGGER_SOURCES


def anp_target(model: BackdoorModel, images: torch.Tensor, eps: float, generator: torch.Generator,
               device: torch.device) -> tuple[int, list[int]]:
    """The label-free target guess and the per-class growth of the prediction count it is based on."""
    probe = frozen_copy(model, device)
    gates = NeuronGates(probe, device)
    pseudo, noisy = [], []
    for start in range(0, len(images), BATCH_SIZE):
        x = images[start:start + BATCH_SIZE].to(device)
        with torch.no_grad():
            logits = probe(x)
        pseudo.append(logits.argmax(1))
        gates.adversarial_noise(probe, x, pseudo[-1], eps, generator)
        with torch.no_grad(), gates.view("noisy"):
            noisy.append(probe(x).argmax(1))
    classes = logits.shape[1]
    growth = torch.bincount(torch.cat(noisy), minlength=classes) - torch.bincount(torch.cat(pseudo), minlength=classes)
    return int(growth.argmax()), growth.cpu().tolist()


@TRIGGER_SOURCES.register("anp", summary="CNP's label-free guess: the class one ANP step on the BN neurons drifts "
                          "to, then an NC inversion for it (cnp-anp-eps; always names a label)")
class ANPGuess(TriggerSource):
    def find(self, model: BackdoorModel, clean: CleanSet, num_classes: int, device: torch.device,
             generator: torch.Generator) -> Finding:
        t0 = time.perf_counter()
        target, growth = anp_target(model, clean.x, self.cfg["cnp-anp-eps"], generator, device)
        inv = invert(model, inversion_images(clean.x, self.cfg, generator), [target], nc_settings(self.cfg),
                     generator, device)[0]
        record = {"flagged": [target], "anp_label_growth": growth, "anp_trigger_asr": inv.asr,
                  "inversion_seconds": time.perf_counter() - t0}
        return Finding([target], {target: Trigger(pattern=inv.pattern, mask=inv.mask, alpha=1.0)}, record)
