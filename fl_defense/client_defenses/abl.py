"""`client-defense=abl`: Anti-Backdoor Learning (Li et al., NeurIPS 2021) on an honest client, in FL rounds.

ABL rests on backdoor samples being learned much faster than clean ones. Its stages, counted in
the run's rounds instead of epochs:

1. rounds 1..abl-isolation-rounds: local gradient ascent (LGA) holds the batch loss near gamma, so
   clean samples stay around gamma while backdoor samples fall far below it;
2. at the client's first round after that, the per-sample loss isolates the lowest
   abl-isolation-ratio share of the local data (kept in the client's memory). The loss is that of
   the received model after one more local LGA pass, not of the received model itself: averaging
   with the clean clients dilutes the backdoor in the global model so much that the easiest clean
   samples have lower loss than the poisoned ones, while a model trained on the client's own
   poisoned data, as in the paper, learns the backdoor first;
3. then plain training on the other samples, until
4. the last abl-unlearn-rounds rounds unlearn: pure gradient ascent on the isolated samples at
   abl-unlearn-lr, as in the official code, bounded per sample (below). The paper's combined loss
   (descent on the other samples in the same steps) was measured worse in FL: a poisoned client's
   other samples still hold most of its poison, so the descent re-plants the backdoor as fast as the
   ascent removes it.

The ascent is slow where the model is sure: on the defense table's BadNets run at 717f8c3 (seed 0) the
isolation was exact (each poisoned client's 570 isolated samples were all poisoned ones), but their loss was
7e-4 on average, so -cross-entropy's gradient was near zero and ASR stayed 0.97-0.99 through the five
unlearning rounds (at 46d242b the same setting ended at 0.025). A bounded loss that pulls hardest where the
model is surest, -log(1 - p_label) (unlikelihood), took one poisoned client's own model from ASR 0.98 to 0.002
in one round, but in the federated run every clean client unlearnt its own isolated samples, its easiest clean
ones (250-460 of 570 were Trousers), as hard: BA 0.90 -> 0.45 by round 20 at ASR 0.28. Not kept: an honest
client cannot tell whether its isolated samples are poison.

What the unlearning sees, measured on one federated run per attack (seed 0, threat poisoned-data, at acc8057
with a logging patch not kept; per client, the isolated samples' mean loss): at isolation, under the client's
LGA pass, a clean client's isolated samples (46-79% of them Trousers) had loss 8e-4 to 3.5e-3 against a median
of 0.27-0.44 for its other samples; a BadNets victim's had loss 0 in float32 (below 1e-7), a Blended victim's
4e-3, inside the clean clients' range. During the unlearning rounds, on the received global model, the clean
clients' isolated losses stayed at 1e-6 to 5e-4 (their ascent does nothing: the clean clients are not what
costs BA), while the victims' rose from 1e-3 to 0.4-1.2 (BadNets, ASR 0.99 -> 0.195 at round 20, BA 0.900, still
falling: the ascent takes off late and the seeds end anywhere from 0.02 to 1.0) and from 0.2 to 6.5-7.7 (Blended,
ASR 0.19, BA 0.81: the unbounded ascent that removes the blend also removes clean features). Two changes were
tried and not kept: the ascent bounded per sample at ln(classes) with abl-unlearn-lr 2e-3 ended BadNets at ASR
0.062 (BA 0.896) but left Blended at 0.954 (a victim stops once its isolated samples are unlearnt, and FedAvg
passes a fifth of that on: the blend is not removed); the unbounded ascent at 2e-3 unlearnt BadNets by round 17
(ASR 0.037, BA 0.857) and then collapsed both runs to BA 0.10 by round 18.

The unlearning is bounded per sample at ln(classes) since 2026-12-06 (`unlearn_loss`): a sample whose label is
already below chance (cross-entropy above ln C) gives no more ascent; below that the gradient is the paper's.
The paper's unbounded ascent diverges once it moves: the centralised control (simulations/configs/centralised.toml,
BadNets, seed 0) ended its first unlearning round with a NaN loss, the server rejected the update, and all five
unlearning rounds left the model as it was (ASR 0.998). Traced on that model with its 5,700 isolated samples
(80% poisoned) at the paper's 5e-4, batch 32: ASR 0.997 -> 0.015 after 16 steps at BA 0.906 -> 0.904, then BA
0.75 at 40 steps, 0.10 at 60, NaN at 85. The official code runs about 16 steps (4 epochs over 500 samples at
batch 128) and stops before that. Bounded, on the 570 isolated samples that were poisoned (the paper's 1%): ASR
0.013 after two passes of 18 steps, 0.004 after five, BA 0.906 -> 0.891; unbounded, BA 0.79 after two passes
and NaN in the fourth. The bound does not save an impure isolation: on all 5,700 (1,148 of them clean) one
bounded pass took ASR to 0 and BA to 0.83, the clean ones being pushed to chance too. Hence the
centralised config isolates the paper's 1%: there, 565 of BadNets' 570 isolated samples were poisoned and the
run ended at ASR 0.013, BA 0.893 (no defense: 0.903; seed 0 at 613e517).

The isolation itself fails on Blended here, centrally too (the control, seed 0 at 613e517): of the 570 isolated
samples none was poisoned: after the LGA rounds the lowest losses were clean images', and unlearning those
570 took BA from 0.90 to 0.73 and left ASR at 0.997. ABL's premise, that the backdoor is
learned before any clean sample, holds for the 3x3 patch and not for this blend on this data set.

The bound keeps the ascent finite, not fast: where it does not take off it stays in the flat region. Centralised
BadNets, seeds 0-2 (613e517 and 3b4fc89, the same ABL code; 565, 568 and 570 of the 570 isolated samples poisoned):
ASR 0.013, 0.893 and 0.102. At seed 1 the isolated samples' loss stayed at 7e-5 in the median (5e-4 in train mode),
and five more bounded passes on its final model moved ASR only from 0.894 to 0.866. Minimising the unlikelihood
-log(1 - p_label) instead, with the same bound, does not saturate: from that model at 1e-4, ASR 0.051 after one
pass at BA 0.901 and 0.013 after five at BA 0.872; at 2e-5, 0.102 after five at BA 0.902; at 5e-4, 0.002 after one
at BA 0.851. Not adopted: measured on one model only, and in the federated setting the clean clients would unlearn
their own easiest samples with it (see above).

Federated with the bound (default setting, threat poisoned-data, the defense table's poisoned part, 3 seeds at
67158a6, seed 0 at 3b4fc89): BadNets ASR 0.980 +/- 0.023, Blended 0.950 +/- 0.047, BA drops 0.009 and 0.010; no
update rejected. Every victim's isolation was pure (570 of 570 poisoned, 12 of 12 victims), so the unlearning alone
fails: diluted by FedAvg it stays in the flat region (ASR over the five unlearning rounds 0.93-0.99 -> 0.90-1.00).
The unbounded ascent of the table before (48d223a) removed more where it moved (Blended 0.084 +/- 0.064) and took
BA with it (-0.154). ABL misses issue 19's federated bar either way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from fl_defense.client_defenses.base import ClientDefense, Memory
from fl_defense.data import to_float
from fl_defense.errors import ConfigError
from fl_defense.models.base import BackdoorModel
from fl_defense.registry import CLIENT_DEFENSES, between, choice, positive
from fl_defense.training import LossFn, train_local

ISOLATED = "abl-isolated"
SUSPECTS = "abl-suspects"
STRIP_OVERLAYS = 8
STRIP_FRR = 0.01


def lga_loss(loss: torch.Tensor, gamma: float) -> torch.Tensor:
    """LGA: sign(loss - gamma) * loss. Descent while the loss is above gamma, ascent once below it."""
    return torch.sign(loss - gamma) * loss


@torch.no_grad()
def per_sample_loss(model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                    batch_size: int, device: torch.device) -> torch.Tensor:
    """Cross-entropy of each sample `images[indices]` under `model` in eval mode (float, on the CPU)."""
    model.to(device).eval()
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        logits = model(to_float(images[idx]).to(device))
        out.append(F.cross_entropy(logits, labels[idx].to(device), reduction="none").cpu())
    return torch.cat(out) if out else torch.empty(0)


def isolate(model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, ratio: float,
            batch_size: int, device: torch.device) -> torch.Tensor:
    """The `ratio` share of `indices` (at least one) with the lowest loss: ABL's suspected backdoor samples."""
    losses = per_sample_loss(model, images, labels, indices, batch_size, device)
    k = min(len(indices), max(1, int(round(ratio * len(indices)))))
    order = torch.argsort(losses, stable=True)
    return indices[order[:k]].sort().values


def unlearn_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The unlikelihood -log(1 - p_label), minimised: pushes the label's probability down hardest where the model is
    surest, where ABL's -cross-entropy has almost no gradient; it is bounded below by 0 and its gradient vanishes as
    p_label goes to 0, so unlike -cross-entropy it cannot diverge."""
    log_p = F.log_softmax(logits, 1)
    label = F.one_hot(labels, logits.shape[1]).bool()
    return -log_p.masked_fill(label, -math.inf).logsumexp(1).mean()


@torch.no_grad()
def strip_entropy(model: BackdoorModel, images: torch.Tensor, indices: torch.Tensor, partners: torch.Tensor,
                  generator: torch.Generator, batch_size: int, device: torch.device) -> torch.Tensor:
    """STRIP (Gao et al., ACSAC 2019): each image of `indices` averaged half and half with STRIP_OVERLAYS random
    images of `partners`; the mean entropy of the model's predictions. A trigger survives the overlay and keeps the
    prediction sure (low entropy); a clean image's prediction is pulled toward its partner's (high entropy)."""
    model.to(device).eval()
    picks = partners[torch.randint(len(partners), (STRIP_OVERLAYS, len(indices)), generator=generator)]
    out = []
    for start in range(0, len(indices), batch_size):
        x = to_float(images[indices[start:start + batch_size]]).to(device)
        total = torch.zeros(len(x), device=device)
        for pick in picks[:, start:start + batch_size]:
            p = F.softmax(model(0.5 * x + 0.5 * to_float(images[pick]).to(device)), 1)
            total += -(p * p.clamp_min(1e-12).log()).sum(1)
        out.append((total / STRIP_OVERLAYS).cpu())
    return torch.cat(out) if out else torch.empty(0)


def suspects(model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             isolated: torch.Tensor, share: float, generator: torch.Generator, batch_size: int,
             device: torch.device) -> torch.Tensor:
    """The client's samples that STRIP flags, if they are at least `share` of the isolated ones; else none.

    Flagged: entropy below the STRIP_FRR quantile of a clean reference, as many of the client's other samples, the
    lowest-loss ones, whose label is not the isolated samples' most common one (a poisoned-label attack relabels its
    samples to the target, so these are clean; the easiest, because the isolated ones are the easiest too, and
    easy clean samples keep their prediction under overlays more than the median one does). Once the isolated
    samples say the data is poisoned, all samples are screened: the isolated share is far smaller than the
    poisoned one where the poison rate is high."""
    rest = indices[~torch.isin(indices, isolated)]
    if not len(rest):
        return isolated[:0]
    others = rest[labels[rest] != labels[isolated].mode().values]
    reference = others if len(others) else rest
    easiest = torch.argsort(per_sample_loss(model, images, labels, reference, batch_size, device), stable=True)
    reference = reference[easiest[:len(isolated)]]
    threshold = strip_entropy(model, images, reference, rest, generator, batch_size, device).quantile(STRIP_FRR)
    if (strip_entropy(model, images, isolated, rest, generator, batch_size, device) < threshold).float().mean() < share:
        return isolated[:0]
    return indices[strip_entropy(model, images, indices, rest, generator, batch_size, device) < threshold]


def quarantined(labels: torch.Tensor, indices: torch.Tensor, flagged: torch.Tensor, quarantine: str) -> torch.Tensor:
    """What a client whose data STRIP found poisoned trains on until it unlearns: `indices` without the flagged
    samples, or (`label`) without every sample of their most common label, the target's."""
    if quarantine == "label":
        return indices[labels[indices] != labels[flagged].mode().values]
    return indices[~torch.isin(indices, flagged)]


def _check_stages_fit(cfg: Mapping[str, Any]) -> None:
    stages = cfg["abl-isolation-rounds"] + cfg["abl-unlearn-rounds"]
    if stages > cfg["rounds"]:
        raise ConfigError(f"config key 'abl-unlearn-rounds': abl-isolation-rounds + abl-unlearn-rounds ({stages}) "
                          f"is more than rounds ({cfg['rounds']}); allowed: a sum <= rounds")


@CLIENT_DEFENSES.register("abl", options=[
    positive("abl-isolation-rounds", 5, "ABL: first rounds, local gradient ascent (LGA) training; the next round "
             "isolates (the paper: 20 epochs)"),
    positive("abl-gamma", 0.5, "ABL: LGA loss threshold gamma"),
    between("abl-isolation-ratio", 0.1, "ABL: share of each client's samples isolated (lowest loss) and later "
            "unlearned (the paper: 0.01, too few to unlearn a backdoor through FedAvg)", 0, 1, "()"),
    between("abl-strip-share", 0.6, "ABL: the client unlearns its isolated samples that STRIP flags (entropy "
            "under overlays below the 1st percentile of its other-label samples) only if they are at least this "
            "share of the isolated; else it takes them for its easiest clean samples and trains on all", 0, 1, "(]"),
    choice("abl-quarantine", "label", "ABL: what a client whose data STRIP found poisoned leaves out of its training "
           "until it unlearns: every sample of the flagged samples' label (left to the other clients), or the flagged "
           "samples only (a client alone, as in the papers' centralised setting)", ["label", "flagged"]),
    positive("abl-unlearn-rounds", 5, "ABL: last rounds, unlearning of the flagged isolated samples (the "
             "unlikelihood -log(1 - p_label))"),
    positive("abl-unlearn-lr", 5e-4, "ABL: learning rate of the unlearning"),
], checks=[_check_stages_fit], summary="ABL (Li et al. 2021): isolate the lowest-loss samples under LGA, then, "
                                       "where STRIP says they carry a trigger, unlearn them")
class ABL(ClientDefense):

    def train(self, model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
              server_round: int, generator: torch.Generator, device: torch.device, memory: Memory) -> float:
        cfg = self.cfg
        if server_round <= cfg["abl-isolation-rounds"]:
            return self._lga(model, images, labels, indices, generator, device)
        if SUSPECTS not in memory:
            local = copy.deepcopy(model)
            self._lga(local, images, labels, indices, generator, device)
            if ISOLATED not in memory:
                memory[ISOLATED] = isolate(local, images, labels, indices, cfg["abl-isolation-ratio"],
                                           cfg["eval-batch-size"], device)
            memory[SUSPECTS] = suspects(local, images, labels, indices, memory[ISOLATED], cfg["abl-strip-share"],
                                        generator, cfg["eval-batch-size"], device)
        if not len(memory[SUSPECTS]):
            return self._sgd(model, images, labels, indices, cfg["lr"], generator, device, F.cross_entropy)
        if server_round <= cfg["rounds"] - cfg["abl-unlearn-rounds"]:
            rest = quarantined(labels, indices, memory[SUSPECTS], cfg["abl-quarantine"])
            return self._sgd(model, images, labels, rest, cfg["lr"], generator, device, F.cross_entropy)
        return self._sgd(model, images, labels, memory[SUSPECTS], cfg["abl-unlearn-lr"], generator, device,
                         unlearn_loss)

    def _lga(self, model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             generator: torch.Generator, device: torch.device) -> float:
        gamma = self.cfg["abl-gamma"]
        return self._sgd(model, images, labels, indices, self.cfg["lr"], generator, device,
                         lambda logits, y: lga_loss(F.cross_entropy(logits, y), gamma))

    def _sgd(self, model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             lr: float, generator: torch.Generator, device: torch.device, loss_fn: LossFn) -> float:
        cfg = self.cfg
        return train_local(model, images, labels, indices, epochs=cfg["local-epochs"], batch_size=cfg["batch-size"],
                           lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight-decay"], generator=generator,
                           device=device, loss_fn=loss_fn, amp=cfg["amp"])
