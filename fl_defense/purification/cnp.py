"""CNP: Contrastive Neuron Pruning (Feng et al., IEEE TIP 34, 2025; DOI 10.1109/TIP.2025.3539466).

Every BatchNorm neuron gets a mask m in [0, 1] (initially 1) that scales its weight. The masks alone
are trained, on unlabelled clean images x and the same images stamped with an inverted trigger, x'.
Three views give penultimate features: the masked model (c_mask = f_m(x), p_mask = f_m(x')), the
masked model under adversarial ANP noise on the BN weights and biases (c_noise = f_mn(x)), and the
original model (c_ori = f(x), p_ori = f(x')). A multi-positive InfoNCE pulls c_mask, p_mask and
c_noise towards c_ori and pushes c_noise, c_mask and p_mask away from p_ori: the neurons the
trigger's features depend on are the ones whose masks fall, and the lowest-mask neurons are pruned.

The target label and trigger come from the defense pipeline: the run's trigger source (`cnp-target=scan`,
by default the NC scan), or CNP's own label-free guess (`anp`, the `anp` trigger source of
`fl_defense.inversion.anp`).

Deviations from the reference code, for this project: BN runs on its running statistics in every
view (the reference trains the masks with batch statistics), so the masks are learned on the
function the pruned model computes; the ANP noise is clamped to [-eps, eps] after its step; a pruned
neuron's bias is zeroed with its weight, so it outputs exactly 0; and an optional clean-accuracy
budget chooses how many neurons to prune (the reference reports a sweep on the test set).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.attacks.trigger import Stamp
from fl_defense.metrics import clean_accuracy
from fl_defense.models.base import BackdoorModel
from fl_defense.purification.base import CleanSet, TriggerPurifier, frozen_copy, trainable_copy
from fl_defense.registry import PURIFIERS, between, choice, positive

BATCH_SIZE = 128  # the reference code's
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BUDGET_STEP_SHARE = 0.0025  # budget mode prunes in steps of 0.25% of the BN neurons (the reference code's sweep)


def cnp_loss(c_mask: torch.Tensor, p_mask: torch.Tensor, c_noise: torch.Tensor, c_ori: torch.Tensor,
             p_ori: torch.Tensor, tau: float) -> torch.Tensor:
    """Multi-positive InfoNCE: logits cos(.,.)/tau of (c_mask, c_ori), (p_mask, c_ori), (c_noise, c_ori)
    [positives] and (c_noise, p_ori), (c_mask, p_ori), (p_mask, p_ori) [negatives]; the mean over the
    three positives of cross-entropy(logits, positive), averaged over the batch."""
    pairs = ((c_mask, c_ori), (p_mask, c_ori), (c_noise, c_ori), (c_noise, p_ori), (c_mask, p_ori), (p_mask, p_ori))
    logits = torch.stack([F.cosine_similarity(a, b, dim=1) for a, b in pairs], dim=1) / tau
    return (torch.logsumexp(logits, dim=1) - logits[:, :3].mean(dim=1)).mean()


class NeuronGates:
    """A mask and ANP noise for every affine BatchNorm neuron of `model`, applied by forward hooks.

    A BN neuron outputs y = w * x_hat + b. The hook rewrites it to (y - b) * (m + d) + b * (1 + e),
    i.e. w (m + d) x_hat + b (1 + e): ANP's perturbed neuron with noise (d, e) on weight and bias, or
    w m x_hat + b without noise. Acting on the output leaves torch's BatchNorm itself untouched.
    `view` selects what the hooks do: "original" (nothing), "masked" or "noisy".
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, BATCH_NORMS) and m.affine]
        if not named:
            raise ValueError("CNP needs a model with affine BatchNorm layers")
        self.names = [n for n, _ in named]
        sizes = [bn.num_features for _, bn in named]
        self.masks = [torch.ones(k, device=device, requires_grad=True) for k in sizes]
        self.weight_noise = [torch.zeros(k, device=device, requires_grad=True) for k in sizes]
        self.bias_noise = [torch.zeros(k, device=device, requires_grad=True) for k in sizes]
        self.mode = "original"
        for i, (_, bn) in enumerate(named):
            bn.register_forward_hook(partial(self._hook, i))

    def _hook(self, i: int, bn: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "original":
            return None
        shape = (1, -1) + (1,) * (out.dim() - 2)
        bias = bn.bias.view(shape)
        if self.mode == "masked":
            return (out - bias) * self.masks[i].view(shape) + bias
        return ((out - bias) * (self.masks[i] + self.weight_noise[i]).view(shape)
                + bias * (1 + self.bias_noise[i]).view(shape))

    @contextmanager
    def view(self, mode: str) -> Iterator[None]:
        before, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = before

    @property
    def size(self) -> int:
        return sum(len(m) for m in self.masks)

    def adversarial_noise(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float,
                          generator: torch.Generator) -> None:
        """ANP's one-step attack: noise uniform in [-eps, eps], then one signed step of size eps that
        raises the cross-entropy of the noisy model on `labels`, clamped back to [-eps, eps]."""
        noise = self.weight_noise + self.bias_noise
        with torch.no_grad():
            for n in noise:
                n.copy_(torch.rand(n.shape, generator=generator).to(n.device) * 2 * eps - eps)
        with self.view("noisy"):
            loss = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss, noise)
        with torch.no_grad():
            for n, g in zip(noise, grads, strict=True):
                n.add_(eps * g.sign()).clamp_(-eps, eps)

    def lowest(self, count: int) -> list[tuple[int, int]]:
        """(layer, neuron) of the `count` neurons with the smallest masks, over all layers, smallest first."""
        flat = torch.cat([m.detach() for m in self.masks]).cpu()
        layer = torch.cat([torch.full((len(m),), i) for i, m in enumerate(self.masks)])
        neuron = torch.cat([torch.arange(len(m)) for m in self.masks])
        order = torch.argsort(flat, stable=True)[:count]
        return [(int(layer[j]), int(neuron[j])) for j in order]


def prune_neurons(model: nn.Module, names: list[str], neurons: list[tuple[int, int]]) -> None:
    """Zero BN weight and bias of each (layer, neuron): the neuron then outputs exactly 0, in eval and
    train mode, and the zeros travel in the state_dict."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer, neuron in neurons:
            bn = modules[names[layer]]
            bn.weight[neuron] = 0.0
            bn.bias[neuron] = 0.0


@PURIFIERS.register("cnp", options=[
    choice("cnp-target", "scan", "how CNP finds the target label: scan (the run's inversion source, by default the NC "
           "scan) or anp (CNP's own label-free one-step BN-perturbation heuristic, the `anp` source)", ("scan", "anp")),
    positive("cnp-epochs", 10, "CNP mask-learning epochs over the clean set (the paper's code: 30 passes over 1,000 "
             "images; 30 here ranked the BadNets neurons no better at 3x the time)"),
    positive("cnp-lr", 0.2, "CNP mask-learning SGD learning rate"),
    positive("cnp-tau", 0.3, "CNP contrastive temperature"),
    positive("cnp-anp-eps", 0.4, "CNP: bound of the adversarial BN-neuron perturbation (also the anp source's)"),
    between("cnp-prune-ratio", 0.25, "CNP: share of all BatchNorm neurons pruned, lowest mask first (at least one); "
            "with cnp-max-ba-drop > 0, the most it may prune. The paper's 1% is 48 of ResNet-18's 4,800 BN neurons but "
            "1 of the small CNN's 48, which left BadNets' ASR at 0.96; there CNP needed 10-12 of them", 0, 1, "()"),
    between("cnp-max-ba-drop", 0.025, "CNP: if > 0, prune in steps of 0.25% of the neurons (at least one) up to "
            "cnp-prune-ratio, stopping before the clean-set accuracy drops by more than this; 0: prune exactly "
            "cnp-prune-ratio", 0, 1, "[)"),
], summary="contrastive neuron pruning: BN neuron masks contrasting clean and trigger-stamped features, prune the "
           "lowest")
class CNP(TriggerPurifier):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self.pruned: list[tuple[str, int]] = []
        self.neurons = 0

    def trigger_source(self) -> str:
        """`cnp-target=anp` asks for CNP's own label-free guess; `scan` for the run's source."""
        return "anp" if self.cfg["cnp-target"] == "anp" else super().trigger_source()

    def report(self) -> dict[str, Any]:
        return {"cnp_pruned": [f"{name}[{i}]" for name, i in self.pruned],
                "cnp_pruned_share": len(self.pruned) / max(self.neurons, 1)}

    def purify(self, model: BackdoorModel, clean: CleanSet, trigger: Stamp, device: torch.device,
               generator: torch.Generator) -> BackdoorModel:
        probe = frozen_copy(model, device)
        gates = NeuronGates(probe, device)
        self._train_masks(probe, gates, clean, trigger, device, generator)
        neurons = gates.lowest(self._prune_count(model, gates, clean, device))
        self.pruned = [(gates.names[layer], neuron) for layer, neuron in neurons]
        self.neurons = gates.size
        purified = trainable_copy(model, device).eval()
        prune_neurons(purified, gates.names, neurons)
        return purified

    def _train_masks(self, probe: BackdoorModel, gates: NeuronGates, clean: CleanSet, trigger: Stamp,
                     device: torch.device, generator: torch.Generator) -> None:
        cfg = self.cfg
        eps = cfg["cnp-anp-eps"]
        # The original view is frozen and BN uses running statistics: its features are computed once.
        with torch.no_grad():
            c_all = torch.cat([probe.features(clean.x[s:s + BATCH_SIZE].to(device))
                               for s in range(0, len(clean.x), BATCH_SIZE)])
            p_all = torch.cat([probe.features(trigger.apply(clean.x[s:s + BATCH_SIZE].to(device)))
                               for s in range(0, len(clean.x), BATCH_SIZE)])
            clean_pred = probe.classify(c_all).argmax(1)
        opt = torch.optim.SGD(gates.masks, lr=cfg["cnp-lr"], momentum=0.9)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2, min_lr=0.01)
        for _ in range(cfg["cnp-epochs"]):
            agree = 0  # stamped images the masked model classifies as the original does the clean ones
            for idx in clean.batches(BATCH_SIZE, generator):
                x, on = clean.x[idx].to(device), idx.to(device)
                c_ori, p_ori = c_all[on], p_all[on]
                with gates.view("masked"):
                    feats = probe.features(torch.cat([x, trigger.apply(x)]))
                c_mask, p_mask = feats[:len(x)], feats[len(x):]
                with torch.no_grad():
                    pseudo = probe.classify(c_mask).argmax(1)
                    agree += int((probe.classify(p_mask).argmax(1) == clean_pred[on]).sum())
                gates.adversarial_noise(probe, x, pseudo, eps, generator)
                with gates.view("noisy"):
                    c_noise = probe.features(x)
                loss = cnp_loss(c_mask, p_mask, c_noise, c_ori, p_ori, cfg["cnp-tau"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for m in gates.masks:
                        m.clamp_(0.0, 1.0)
            plateau.step(agree / len(clean.x))

    def _prune_count(self, model: BackdoorModel, gates: NeuronGates, clean: CleanSet, device: torch.device) -> int:
        """`cnp-prune-ratio` of the BN neurons (at least one); with `cnp-max-ba-drop` > 0, the largest
        count up to that, in steps of 0.25% of the neurons (at least one), whose clean-set accuracy
        stays within the budget. Prunes a probe cumulatively and stops at the first count that drops too far."""
        n = gates.size
        budget = self.cfg["cnp-max-ba-drop"]
        limit = max(1, int(self.cfg["cnp-prune-ratio"] * n))
        if budget <= 0:
            return limit
        batch = self.cfg["eval-batch-size"]
        step = max(1, round(BUDGET_STEP_SHARE * n))
        probe = frozen_copy(model, device)
        floor = clean_accuracy(probe, clean.x, clean.y, batch, device) - budget
        order = gates.lowest(limit)
        kept = 0
        for count in range(step, limit + 1, step):
            prune_neurons(probe, gates.names, order[kept:count])
            if clean_accuracy(probe, clean.x, clean.y, batch, device) < floor:
                break
            kept = count
        return kept
