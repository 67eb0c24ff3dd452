"""`client-defense=abl`: Anti-Backdoor Learning (Li et al., NeurIPS 2021) on an honest client, in FL rounds.

ABL rests on backdoor samples being learned much faster than clean ones. Its stages, counted in the run's rounds
instead of epochs, and what this module adds for federated learning (each addition measured below):

1. rounds 1..abl-isolation-rounds: local gradient ascent (LGA) holds the batch loss near gamma, so clean samples
   stay around gamma while backdoor samples fall far below it;
2. at the client's first round after that, the per-sample loss isolates the lowest abl-isolation-ratio share of
   the local data. The loss is that of the received model after one more local LGA pass, not of the received
   model itself: averaging with the clean clients dilutes the backdoor in the global model so much that the
   easiest clean samples have lower loss than the poisoned ones, while a model trained on the client's own
   poisoned data, as in the paper, learns the backdoor first;
3. added: STRIP's test (Gao et al., ACSAC 2019) on that model. Each isolated sample is overlaid, half and half,
   with random other local images; a trigger keeps the prediction sure (low entropy). The samples under the 1st
   percentile of a clean reference (as many of the client's easiest samples of the other labels) are flagged.
   If fewer than abl-strip-share of the isolated ones are, the client takes them for its easiest clean samples
   and trains plainly on all its data from then on. Otherwise its data is poisoned, STRIP screens all of it, and
4. until the unlearning the client trains without the flagged samples' label (abl-quarantine = label: the
   other clients teach it) or, alone, without the flagged samples (flagged);
5. the last abl-unlearn-rounds rounds unlearn the flagged samples at abl-unlearn-lr: the unlikelihood
   -log(1 - p_label) instead of the paper's gradient ascent on the cross-entropy.

Why each addition (the default setting, threat poisoned-data: 2 of 10 clients' shards 50% poisoned, seed 0 unless
said; records under benchmarks/runs/probes; `python -m benchmarks.abl_isolation RUN` counts what each client
isolated and flagged):

- The test. In FL most clients are clean, and ABL unlearns whatever it isolated: a clean client's isolated samples
  are its easiest (46-79% of them Trousers here), and unlearning them as hard as a victim must (the unlikelihood, in
  an earlier federated run without the test) took BA from 0.90 to 0.45. Under the LGA pass a Blended victim's
  isolated samples have loss 4e-3, inside the clean clients' 8e-4 to 3.5e-3, so the loss cannot tell them apart;
  STRIP can. Replayed outside Flower on round 5's global model (both attacks), the share of isolated samples flagged
  was 0.00-0.46 on clean clients and 0.75-1.00 on victims against random other-label samples as the reference, and
  0.00-0.34 against 0.78-1.00 against the easiest 10% of them (hence that reference; the default 0.6 sits in that
  gap). In the defense table's six federated runs none of the 48 clean clients flagged any; with random other-label
  samples as the reference one BadNets client flagged 351 of 570 (0.62) and unlearnt them, at no BA cost (0.908,
  2a54fa0).
- The screen. The isolated 10% is a fifth of a victim's poison here: unlearning only it (2a54fa0) ended BadNets at
  ASR 0.188 and Blended at 0.625 (BA 0.908), and without the chance bound of the loss below the same (0.184).
  Screening all the data flagged 2,847 of BadNets' 2,850 poisoned samples (2,875 flagged) and took ASR to 0.043
  (3e99e27), but found only 58-65% of Blended's (99% precise); the rest re-planted the blend (ASR 0.83 before the
  unlearning, 0.308 at the end).
- The quarantine. Leaving the flagged label out (d3bb35b) removes all poisoned-label poison whatever the screen
  missed: ASR fell to 0.04-0.05 before the unlearning (round 15) and ended at 0.013 (BadNets) and 0.022
  (Blended) at BA 0.908 and 0.907 (no defense: 0.910). A client alone cannot leave a label out without
  forgetting it, hence `flagged` in the centralised config.
- The loss. ABL's -cross-entropy has almost no gradient on samples the model is sure of, and diverges once it
  moves. Federated (67158a6, 3 seeds) every victim's isolation was pure (570 of 570 poisoned) and the unlearning
  did nothing: their loss was 7e-4 and ASR stayed 0.90-1.00 (BadNets 0.980 +/- 0.023, Blended 0.950 +/- 0.047).
  Centrally (simulations/configs/centralised.toml, BadNets, seed 0, before the bound) the first unlearning round
  ended in NaN and the server rejected the update (ASR 0.998); traced at the paper's 5e-4, BA 0.906 -> 0.75 at
  40 steps, 0.10 at 60, NaN at 85. Bounded at ln(classes) it stayed on the plateau at seed 1 (loss 7e-5, ASR
  0.893). The unlikelihood pushes hardest where p_label is near 1, is bounded below by 0 and cannot diverge
  (tests/test_abl.py shows both on a model sure of the poison).

Measured with all of it (benchmarks/README.md, the defense table, 3 seeds): federated, BadNets ASR 0.008 +/- 0.005
and Blended 0.015 +/- 0.006 at BA drops of 0.003 and 0.006; every victim called poisoned, no clean client flagged a
sample. Centrally (simulations/configs/centralised.toml, 9ee023e), BadNets ASR 0.003 +/- 0.002 at a BA drop of
0.023 +/- 0.019: the first unlearning round removes the backdoor and the next four take about 0.006 BA each, as
nothing stops the unlearning once the flagged samples are below chance. Blended misses centrally (0.999, 0.999,
0.005): at seed 0 ABL's own premise fails (none of the 570 isolated samples was poisoned: after the LGA rounds the
lowest losses were clean images', as at 613e517), at seed 1 STRIP's test said clean (462 of 570 isolated were
poisoned, fewer than 60% flagged: the reference, as many samples as the isolated, is the easiest 1% there, sure
enough under overlays to hide a half-strength blend). One federated seed of other triggers (99c4aee): WaNet ASR 0.032
(0.963 without a defense) though its isolation was impure (299 and 425 of 570 poisoned); SIG, clean-label, 0.912
(0.938): the isolation held none of its poisoned images.
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
    between("abl-isolation-ratio", 0.1, "ABL: share of each client's samples isolated (lowest loss) and tested "
            "with STRIP (the paper: 0.01)", 0, 1, "()"),
    between("abl-strip-share", 0.6, "ABL: a client takes its data for poisoned when STRIP flags at least this share "
            "of its isolated samples (entropy under overlays below the 1st percentile of as many of its easiest "
            "other-label samples), then screens all its samples the same way; else it takes the isolated ones for "
            "its easiest clean samples and trains on all", 0, 1, "(]"),
    choice("abl-quarantine", "label", "ABL: what a client whose data STRIP found poisoned leaves out of its training "
           "until it unlearns: every sample of the flagged samples' label (left to the other clients), or the flagged "
           "samples only (a client alone, as in the papers' centralised setting)", ["label", "flagged"]),
    positive("abl-unlearn-rounds", 5, "ABL: last rounds, unlearning of the flagged samples (the unlikelihood "
             "-log(1 - p_label))"),
    positive("abl-unlearn-lr", 5e-4, "ABL: learning rate of the unlearning"),
], checks=[_check_stages_fit], summary="ABL (Li et al. 2021): isolate the lowest-loss samples under LGA; where "
                                       "STRIP says they carry a trigger, screen all samples and unlearn the flagged")
class ABL(ClientDefense):

    def train(self, model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
              server_round: int, generator: torch.Generator, device: torch.device, memory: Memory) -> float:
        cfg = self.cfg
        if server_round <= cfg["abl-isolation-rounds"]:
            return self._lga(model, images, labels, indices, generator, device)
        if SUSPECTS not in memory:
            local = copy.deepcopy(model)
            self._lga(local, images, labels, indices, generator, device)
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
