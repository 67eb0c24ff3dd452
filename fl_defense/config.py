"""Experiment configuration: one flat table of typed keys, shared by the CLI and `flwr run`.

The keys are the same as Flower's run config (`[tool.flwr.app.config]` in pyproject.toml), so an
experiment reads the same whichever way it is started. Every value is checked here, before any
training starts, and a bad one raises `ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A user error in the configuration; its message is one line meant for the user."""


Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Option:
    """One configuration key: its type, default, and the values it accepts."""

    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    allowed: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _unit_open(v: float) -> bool:
    return 0 < v < 1


def _unit_closed(v: float) -> bool:
    return 0 <= v <= 1


SCHEDULE_RE = re.compile(r"^(always|never|every:[1-9]\d*|window:\d+-\d+(,\d+-\d+)*)$")
DEFENSE_SCHEDULE_RE = re.compile(r"^(end|every:[1-9]\d*)$")
LOCATION_RE = re.compile(r"^(bottom-right|bottom-left|top-right|top-left|center|\d+,\d+)$")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")

OPTIONS: dict[str, Option] = {
    "dataset": Option("fashion-mnist", "image dataset",
                      choices=("fashion-mnist", "mnist", "cifar10", "gtsrb")),
    "data-root": Option("", "torchvision-format dataset root; empty: search the defaults"),
    "download": Option(True, "let torchvision download a dataset that is not found locally"),
    "model": Option("auto", "network; auto: cnn for 1x28x28, resnet18 for 3x32x32",
                    choices=("auto", "cnn", "resnet18")),
    "num-clients": Option(10, "number of simulated clients", check=_positive, allowed="an integer >= 1"),
    "clients-per-round": Option(10, "clients sampled for training each round", check=_positive,
                                allowed="an integer >= 1 and <= num-clients"),
    "rounds": Option(20, "federated rounds", check=_positive, allowed="an integer >= 1"),
    "local-epochs": Option(1, "local epochs per round", check=_positive, allowed="an integer >= 1"),
    "batch-size": Option(32, "local mini-batch size", check=_positive, allowed="an integer >= 1"),
    "lr": Option(0.02, "client SGD learning rate", check=_positive, allowed="a number > 0"),
    "momentum": Option(0.9, "client SGD momentum", check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    "weight-decay": Option(5e-4, "client SGD weight decay", check=_non_negative, allowed="a number >= 0"),
    "partition": Option("iid", "how the training set is split across clients", choices=("iid", "dirichlet")),
    "alpha": Option(0.5, "Dirichlet concentration for label skew (smaller: more skew)", check=_positive,
                    allowed="a number > 0"),
    "malicious-fraction": Option(0.2, "share of clients that are malicious (seeded, fixed for the run)",
                                 check=_unit_closed, allowed="a number in [0, 1]"),
    "attack": Option("badnets", "backdoor trigger planted by malicious clients: badnets (patch), blended, dba "
                     "(distributed pieces), wanet (warp), sig (clean-label sinusoid)",
                     choices=("none", "badnets", "blended", "dba", "wanet", "sig")),
    "trigger-pattern": Option("auto", "trigger pattern of badnets, blended and dba; auto: badnets checkerboard, "
                              "blended noise, dba white; "
                              "or checkerboard, white, noise, or a .npy/.png file",
                              check=lambda v: v in ("auto", "checkerboard", "white", "noise")
                              or v.lower().endswith((".npy", ".png")),
                              allowed="auto, checkerboard, white, noise, or a path ending in .npy or .png"),
    "trigger-mask": Option("", "trigger mask file (.npy/.png); empty: derived from size and location",
                           check=lambda v: v == "" or v.lower().endswith((".npy", ".png")),
                           allowed="empty, or a path ending in .npy or .png"),
    "trigger-size": Option(0, "side of the trigger square in pixels; 0: badnets max(3, side/7), blended the whole image",
                           check=_non_negative, allowed="an integer >= 0"),
    "trigger-location": Option("bottom-right", "where the trigger square sits", check=lambda v: bool(
        LOCATION_RE.match(v)), allowed="bottom-right, bottom-left, top-right, top-left, center, or 'row,col'"),
    "trigger-alpha": Option(0.0, "trigger opacity; 0: badnets 1.0, blended 0.2",
                            check=_unit_closed, allowed="a number in [0, 1]"),
    "target-label": Option(0, "label the backdoor maps triggered inputs to", check=_non_negative,
                           allowed="an integer in [0, num_classes)"),
    "poison-rate": Option(0.5, "share of each malicious batch that is triggered and relabelled",
                          check=lambda v: 0 < v <= 1, allowed="a number in (0, 1]"),
    "boost": Option(1.0, "malicious update scale (model replacement)", check=_positive, allowed="a number > 0"),
    "norm-bound": Option(0.0, "L2 bound on a malicious update; 0: unbounded", check=_non_negative,
                         allowed="a number >= 0"),
    "attack-schedule": Option("always", "rounds in which malicious clients attack",
                              check=lambda v: bool(SCHEDULE_RE.match(v)),
                              allowed="always, never, every:K, or window:A-B[,C-D...]"),
    "malicious-epochs": Option(0, "local epochs of a malicious client in its attacking rounds (DBA's MNIST setting: "
                               "10 against the benign 1); 0: local-epochs", check=_non_negative,
                               allowed="an integer >= 0"),
    "attack-training": Option("plain", "how malicious clients train on their poisoned batches: plain SGD, pgd "
                              "(projected onto an L2 ball, Sun et al. 2019), constrain-and-scale (anomaly-evasion "
                              "loss, then boost; Bagdasaryan et al. 2020) or neurotoxin (only rarely-updated "
                              "coordinates; Zhang et al. 2022)",
                              choices=("plain", "pgd", "constrain-and-scale", "neurotoxin")),
    "pgd-eps": Option(2.0, "pgd: radius of the L2 ball around the global model (trainable parameters) that every "
                      "step is projected onto; benign updates of the default setting have norm ~6 in round 1 and "
                      "~2 by round 20, so 2 keeps the attacker at or below the benign norms (1 plants only "
                      "0.44 in 20 rounds)", check=_positive, allowed="a number > 0"),
    "cs-alpha": Option(0.7, "constrain-and-scale: weight alpha of the classification loss; 1 - alpha weighs the "
                       "L2 distance to the global model (1: no anomaly term)", check=lambda v: 0 < v <= 1,
                       allowed="a number in (0, 1]"),
    "cs-gamma": Option(0.0, "constrain-and-scale: the attackers' update scale gamma (model replacement), times boost; "
                       "0: clients-per-round / malicious expected per round (the paper's n / eta with eta 1, "
                       "shared by the attackers)", check=_non_negative, allowed="a number >= 0"),
    "neurotoxin-top-k": Option(0.01, "neurotoxin: share of coordinates, those the benign updates change most, that "
                               "the attacker leaves untouched (the authors' runs: 0.01-0.05; 0.05 plants 0.89 in "
                               "20 rounds of the default setting, 0.01 0.94)", check=_unit_open,
                               allowed="a number in (0, 1)"),
    "dba-pieces": Option(4, "dba: number of local trigger pieces (the paper: 4)", check=_positive,
                         allowed="an integer >= 1"),
    "dba-piece-height": Option(1, "dba: height of a piece in pixels (the paper's MNIST: 1)", check=_positive,
                               allowed="an integer >= 1"),
    "dba-piece-width": Option(4, "dba: width of a piece in pixels (the paper's MNIST: 4)", check=_positive,
                              allowed="an integer >= 1"),
    "dba-gap": Option(2, "dba: pixels between pieces (the paper's MNIST: 2)", check=_non_negative,
                      allowed="an integer >= 0"),
    "wanet-grid": Option(4, "wanet: control grid size k of the warp (the paper: 4)", check=lambda v: v >= 2,
                         allowed="an integer >= 2"),
    "wanet-strength": Option(4.0, "wanet: warp strength s; a control offset of 1 moves a pixel by s/2 pixels "
                             "(the paper: 0.5, which plants 0.17 in 20 rounds of the default setting)",
                             check=_positive, allowed="a number > 0"),
    "wanet-cross-ratio": Option(0.0, "wanet: noise-mode images (warped with the trigger's grid plus noise, true "
                                "label) per poisoned image (the paper: 2; with it s 2 plants 0.70 in 20 rounds of "
                                "the default setting, without it 0.86, s 4 0.97)", check=_non_negative,
                                allowed="a number >= 0"),
    "sig-delta": Option(0.6, "sig: amplitude of the sinusoid in [0, 1] pixel units (BackdoorBench: 40/255, which "
                        "plants 0.10 in 20 rounds of the default setting; 0.6 plants 0.95)",
                        check=lambda v: 0 < v <= 1, allowed="a number in (0, 1]"),
    "sig-frequency": Option(6.0, "sig: periods of the sinusoid across the image width (BackdoorBench: 6)",
                            check=_positive, allowed="a number > 0"),
    "train-fraction": Option(1.0, "share of the (non-held-out) training set given to clients, for quick runs",
                             check=lambda v: 0 < v <= 1, allowed="a number in (0, 1]"),
    "clean-fraction": Option(0.05, "share of the training set held out, clean, for the server",
                             check=_unit_open, allowed="a number in (0, 1)"),
    "threat": Option("malicious-client", "malicious-client: attackers run their own training code; poisoned-data: "
                     "the malicious-fraction clients are honest but a third party poisoned their local data",
                     choices=("malicious-client", "poisoned-data")),
    "client-defense": Option("none", "training code of honest clients: none (plain SGD), abl (anti-backdoor "
                             "learning) or dbd (decoupled training)", choices=("none", "abl", "dbd")),
    "aggregation": Option("fedavg", "aggregation rule: Flower's strategies (fedavg ... bulyan, dp-clip) or the "
                          "robust rules of the literature (flame, foolsgold, rlr, normclip)",
                          choices=("fedavg", "fedavgm", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan",
                                   "dp-clip", "flame", "foolsgold", "rlr", "normclip")),
    "clip-norm": Option(0.0, "L2 bound on each client's update of the trainable parameters, for dp-clip and "
                        "normclip; 0: normclip clips to the round's median update norm, dp-clip adapts the bound "
                        "(Flower's adaptive clipping)", check=_non_negative, allowed="a number >= 0"),
    "dp-noise-multiplier": Option(0.01, "dp-clip: Gaussian noise std on the aggregate, in units of clip-norm / "
                                  "clients per round (Flower's DP clipping); with clip-norm 0 it must be below "
                                  "clients-per-round / 10. The default is weak DP: at 10 clients a multiplier of 1 "
                                  "puts noise of norm ~90 on updates of norm ~2-6", check=_non_negative, allowed="a number >= 0"),
    "normclip-noise": Option(0.001, "normclip: std of the weak-DP Gaussian noise added to the aggregate "
                             "(Sun et al. 2019)", check=_non_negative, allowed="a number >= 0"),
    "flame-noise": Option(0.001, "FLAME: noise level lambda; the noise std is lambda times the clipping bound",
                          check=_non_negative, allowed="a number >= 0"),
    "foolsgold-confidence": Option(1.0, "FoolsGold: confidence kappa of the logit weighting", check=_positive,
                                   allowed="a number > 0"),
    "rlr-threshold": Option(0, "RLR: sign agreement below which a coordinate's learning rate is flipped; 0: twice "
                            "the expected malicious clients per round, at least 1", check=_non_negative,
                            allowed="an integer >= 0"),
    "defense": Option("none", "server-side defense: a purifier run on the aggregated model (mcl ... cnp), or "
                      "shadow (shadow learning: a second global model trained only on the clients SPECTRE keeps)",
                      choices=("none", "mcl", "ft", "nc-unlearn", "fp", "nad", "cnp", "shadow")),
    "defense-schedule": Option("end", "when the defense runs: end, or every:K rounds (purifiers only)",
                               check=lambda v: bool(DEFENSE_SCHEDULE_RE.match(v)), allowed="end or every:K"),
    "shadow-pca-dims": Option(16, "shadow: PCA dimensions of the clients' last-layer updates before SPECTRE's "
                              "scoring (capped by the clients kept - 1)", check=_positive, allowed="an integer >= 1"),
    "shadow-que-alpha": Option(4.0, "shadow: QUE score exponent alpha (0: Mahalanobis distance)",
                               check=_non_negative, allowed="a number >= 0"),
    "shadow-drop-factor": Option(1.5, "shadow: each round drops the floor(factor x malicious share x clients) "
                                 "highest-scoring clients from the shadow", check=_positive, allowed="a number > 0"),
    "shadow-patience": Option(3, "shadow: training rounds without a clean-set accuracy gain above "
                              "shadow-min-delta after which the shadow is frozen", check=_positive,
                              allowed="an integer >= 1"),
    "shadow-min-delta": Option(0.005, "shadow: clean-set accuracy gain that counts as an improvement",
                               check=_unit_closed, allowed="a number in [0, 1]"),
    "shadow-restart-shift": Option(0.05, "shadow: a frozen shadow is re-initialised and retrained once the "
                                   "backbone's clean-set accuracy moves by more than this from its value at the "
                                   "freeze", check=_unit_open, allowed="a number in (0, 1)"),
    "shadow-start": Option(1, "shadow: round in which the shadow starts training, from the initial weights",
                           check=_positive, allowed="an integer >= 1"),
    "inversion-mode": Option("loop", "trigger inversion: loop (one label at a time, best on CPU), batched "
                             "(all labels in one pass, for a GPU), or ray (labels as Ray tasks, for several GPUs)",
                             choices=("loop", "batched", "ray")),
    "inversion-num-gpus": Option(0.0, "GPU fraction of each Ray inversion task (inversion-mode=ray)",
                                 check=_non_negative, allowed="a number >= 0"),
    "nc-budget": Option("fast", "inversion budget: fast (early-stopped, on nc-images images) or reference "
                        "(BackdoorBench's 80 passes per label over the whole clean set)", choices=("fast", "reference")),
    "nc-epochs": Option(10, "fast budget: passes per label over the inversion images", check=_positive,
                        allowed="an integer >= 1"),
    "nc-images": Option(1000, "fast budget: clean images used for inversion (0: all)", check=_non_negative,
                        allowed="an integer >= 0"),
    "nc-threshold": Option(2.0, "MAD anomaly index above which a label is flagged", check=_positive,
                           allowed="a number > 0"),
    "nc-statistic": Option("log", "anomaly index on raw or log mask norms", choices=("raw", "log")),
    "nc-reference-epochs": Option(5, "epochs of the clean-set reference model that rejects natural-feature "
                                  "triggers (0: no reference check)", check=_non_negative, allowed="an integer >= 0"),
    "nc-transfer-max": Option(0.1, "a label is flagged only if its inverted trigger fools the reference model on "
                              "at most this share of clean images", check=_unit_closed, allowed="a number in [0, 1]"),
    "mcl-epochs": Option(10, "MCL epochs over the clean set", check=_positive, allowed="an integer >= 1"),
    "mcl-lr": Option(0.01, "MCL SGD learning rate (step-decayed)", check=_positive, allowed="a number > 0"),
    "mcl-tau": Option(0.5, "MCL temperature", check=_positive, allowed="a number > 0"),
    "mcl-batch-size": Option(64, "MCL batch size", check=_positive, allowed="an integer >= 1"),
    "mcl-ce-weight": Option(1.0, "weight of MCL's cross-entropy term on clean + stamped images (0: reference MCL)",
                            check=_non_negative, allowed="a number >= 0"),
    "purify-batch-size": Option(64, "batch size of every purifier", check=_positive, allowed="an integer >= 1"),
    "ft-epochs": Option(10, "epochs over the clean set for FT, NC unlearning, FP's fine-tune and NAD",
                        check=_positive, allowed="an integer >= 1"),
    "ft-lr": Option(0.01, "SGD learning rate of FT, NC unlearning, FP and NAD", check=_positive,
                    allowed="a number > 0"),
    "nc-unlearn-ratio": Option(0.2, "share of each NC-unlearning batch stamped with the inverted trigger",
                               check=lambda v: 0 < v < 1, allowed="a number in (0, 1)"),
    "fp-max-ba-drop": Option(0.05, "fine-pruning stops pruning before clean-set accuracy drops by more",
                             check=_unit_open, allowed="a number in (0, 1)"),
    "fp-max-prune-ratio": Option(0.9, "fine-pruning prunes at most this share of last-layer channels",
                                 check=_unit_open, allowed="a number in (0, 1)"),
    "nad-beta": Option(1000.0, "NAD attention-distillation weight per attention layer", check=_non_negative,
                       allowed="a number >= 0"),
    "cnp-target": Option("scan", "how CNP finds the target label: scan (the NC scan's flagged label) or anp "
                         "(CNP's own label-free one-step BN-perturbation heuristic)", choices=("scan", "anp")),
    "cnp-epochs": Option(10, "CNP mask-learning epochs over the clean set (the paper's code: 30 passes over 1,000 "
                         "images; 30 here ranked the BadNets neurons no better at 3x the time)", check=_positive,
                         allowed="an integer >= 1"),
    "cnp-lr": Option(0.2, "CNP mask-learning SGD learning rate", check=_positive, allowed="a number > 0"),
    "cnp-tau": Option(0.3, "CNP contrastive temperature", check=_positive, allowed="a number > 0"),
    "cnp-anp-eps": Option(0.4, "CNP: bound of the adversarial BN-neuron perturbation", check=_positive,
                          allowed="a number > 0"),
    "cnp-prune-ratio": Option(0.25, "CNP: share of all BatchNorm neurons pruned, lowest mask first (at least "
                              "one); with cnp-max-ba-drop > 0, the most it may prune. The paper's 1% is 48 of "
                              "ResNet-18's 4,800 BN neurons but 1 of the small CNN's 48, which left BadNets' ASR at "
                              "0.96; there CNP needed 10-12 of them", check=_unit_open, allowed="a number in (0, 1)"),
    "cnp-max-ba-drop": Option(0.025, "CNP: if > 0, prune in steps of 0.25% of the neurons (at least one) up to "
                              "cnp-prune-ratio, stopping before the clean-set accuracy drops by more than this; "
                              "0: prune exactly cnp-prune-ratio", check=lambda v: 0 <= v < 1,
                              allowed="a number in [0, 1)"),
    "abl-isolation-rounds": Option(5, "ABL: first rounds, local gradient ascent (LGA) training; the next round "
                                   "isolates (the paper: 20 epochs)", check=_positive, allowed="an integer >= 1"),
    "abl-gamma": Option(0.5, "ABL: LGA loss threshold gamma", check=_positive, allowed="a number > 0"),
    "abl-isolation-ratio": Option(0.1, "ABL: share of each client's samples isolated (lowest loss) and later "
                                  "unlearned (the paper: 0.01, too few to unlearn a backdoor through FedAvg)",
                                  check=_unit_open, allowed="a number in (0, 1)"),
    "abl-unlearn-rounds": Option(5, "ABL: last rounds, gradient ascent on the isolated samples", check=_positive,
                                 allowed="an integer >= 1"),
    "abl-unlearn-lr": Option(5e-4, "ABL: learning rate of the gradient ascent", check=_positive,
                             allowed="a number > 0"),
    "dbd-ssl-rounds": Option(10, "DBD: first rounds of federated SimCLR on unlabelled local data", check=_positive,
                             allowed="an integer >= 1"),
    "dbd-head-rounds": Option(2, "DBD: then rounds of linear-head training (frozen backbone, symmetric CE)",
                              check=_positive, allowed="an integer >= 1"),
    "dbd-tau": Option(0.5, "DBD: SimCLR temperature", check=_positive, allowed="a number > 0"),
    "dbd-epsilon": Option(0.5, "DBD: share of local samples kept labelled (lowest SCE) in the semi-supervised stage",
                          check=_unit_open, allowed="a number in (0, 1)"),
    "dbd-lambda-u": Option(15.0, "DBD: MixMatch weight of the unlabelled loss", check=_non_negative,
                           allowed="a number >= 0"),
    "dbd-semi-lr": Option(0.002, "DBD: Adam learning rate of the semi-supervised stage", check=_positive,
                          allowed="a number > 0"),
    "dbd-head-lr": Option(0.01, "DBD: Adam learning rate of the linear-head stage", check=_positive,
                          allowed="a number > 0"),
    "dbd-ssl-lr": Option(0.3, "DBD: SimCLR SGD learning rate (with the run's momentum and weight decay)",
                         check=_positive, allowed="a number > 0"),
    "dbd-ssl-batch-size": Option(128, "DBD: SimCLR batch size (each image gives two views; the rest are negatives)",
                                 check=lambda v: v >= 2, allowed="an integer >= 2"),
    "dbd-blur": Option(0.0, "DBD: probability of the SimCLR Gaussian blur (DBD's code: 0.5)", check=_unit_closed,
                       allowed="a number in [0, 1]"),
    "dbd-sce-alpha": Option(0.1, "DBD: weight of CE in the symmetric cross-entropy", check=_non_negative,
                            allowed="a number >= 0"),
    "dbd-sce-beta": Option(1.0, "DBD: weight of reverse CE in the symmetric cross-entropy", check=_non_negative,
                           allowed="a number >= 0"),
    "dbd-sharpen-t": Option(0.5, "DBD: MixMatch sharpening temperature of the guessed labels", check=_positive,
                            allowed="a number > 0"),
    "dbd-mixup-alpha": Option(0.75, "DBD: MixMatch mixup Beta(alpha, alpha) parameter", check=_positive,
                              allowed="a number > 0"),
    "min-replies": Option(1, "fewest valid client replies a round needs; with fewer the round is skipped and the "
                          "global model stays as it was", check=_positive, allowed="an integer >= 1 and <= "
                          "clients-per-round"),
    "reply-max-norm": Option(1000.0, "a client reply whose update of the trainable parameters has a larger L2 norm "
                             "is rejected (0: no limit); benign updates of the default setting have norm 2-6",
                             check=_non_negative, allowed="a number >= 0"),
    "client-checkpoints": Option(True, "clients also keep their memory (client defense, Neurotoxin) on disk under "
                                 "<out-dir>/client-state, so `fl-defense run --resume` restores it (simulation, or "
                                 "clients sharing the server's file system)"),
    "seed": Option(0, "seed of every random choice of the run"),
    "device": Option("auto", "torch device; auto: CUDA when present",
                     check=lambda v: bool(DEVICE_RE.match(v)), allowed="auto, cpu, cuda, or cuda:N"),
    "amp": Option(False, "mixed precision (autocast: float16 with loss scaling on CUDA, bfloat16 on CPU) in the "
                  "clients' local training and the server's evaluation; the defenses run in float32"),
    "num-cpus": Option(1.0, "CPUs per simulated client (Ray resources; also its torch threads)",
                       check=_positive, allowed="a number > 0"),
    "num-gpus": Option(0.0, "GPUs per simulated client, fractions allowed", check=_non_negative,
                       allowed="a number >= 0"),
    "ray-address": Option("", "Ray cluster to run the clients on: empty starts a local Ray; 'auto' or 'HOST:PORT' "
                          "joins a running cluster (`ray start --head` on one machine, `ray start --address=HOST:PORT` "
                          "on the others)", check=lambda v: v in ("", "auto") or bool(re.match(r"^[\w.-]+:\d+$", v)),
                          allowed="empty, auto, or HOST:PORT"),
    "eval-batch-size": Option(1000, "batch size of the server's evaluation", check=_positive,
                              allowed="an integer >= 1"),
    "out-dir": Option("", "output folder; empty: runs/<dataset>-<attack>-<time>"),
}


def _coerce(key: str, value: Any, opt: Option) -> Any:
    """Convert a value (from TOML, a --set string, or Flower's run config) to the key's type."""
    kind = opt.kind
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return lowered in ("true", "1", "yes")
            return kind(text) if kind is float else int(text)
        except ValueError:
            raise ConfigError(f"config key '{key}': {value!r} is not {_describe(opt)}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}': {value!r} is not {_describe(opt)}")
    return value


def _describe(opt: Option) -> str:
    if opt.choices:
        return "one of " + ", ".join(opt.choices)
    if opt.allowed:
        return opt.allowed
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[opt.kind]


def resolve(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the full, checked configuration: defaults updated by `overrides`."""
    cfg = {k: o.default for k, o in OPTIONS.items()}
    for key, value in (overrides or {}).items():
        if key not in OPTIONS:
            raise ConfigError(f"unknown config key '{key}'; known keys: {', '.join(OPTIONS)}")
        opt = OPTIONS[key]
        value = _coerce(key, value, opt)
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"config key '{key}': {value!r} is not {_describe(opt)}")
        if opt.check and not opt.check(value):
            raise ConfigError(f"config key '{key}': {value!r} is not {_describe(opt)}")
        cfg[key] = value
    _check_combinations(cfg)
    return cfg


def expected_malicious(cfg: Mapping[str, Any]) -> int:
    """Malicious clients expected among the sampled ones: what Krum-style rules are told to tolerate."""
    return int(round(cfg["malicious-fraction"] * cfg["clients-per-round"]))


def _check_aggregation(cfg: dict[str, Any]) -> None:
    """Settings under which an aggregation rule cannot do what it promises fail here, not rounds later."""
    from fl_defense.aggregation.rlr import default_threshold

    n, f, frac = cfg["clients-per-round"], expected_malicious(cfg), cfg["malicious-fraction"]
    if cfg["aggregation"] == "bulyan" and n < 4 * f + 3:
        enough = next((c for c in range(n, 100_000) if c >= 4 * int(round(frac * c)) + 3), None)
        allowed = (f"clients-per-round >= {enough} (num-clients as many)" if enough
                   else "a malicious-fraction below 0.25")
        raise ConfigError(f"config key 'clients-per-round': bulyan tolerates f malicious of n clients per round only "
                          f"if n >= 4f+3; f = round(malicious-fraction {frac} x {n}) = {f} needs n >= {4 * f + 3}, "
                          f"got {n}; allowed: {allowed}")
    noise = cfg["dp-noise-multiplier"]
    if cfg["aggregation"] == "dp-clip" and cfg["clip-norm"] == 0 and noise >= n / 10:
        raise ConfigError(f"config key 'dp-noise-multiplier': with clip-norm 0, dp-clip uses Flower's adaptive "
                          f"clipping, whose clipped-count noise (clients-per-round / 20) leaves room only for a "
                          f"noise multiplier below clients-per-round / 10 = {n / 10:g}; got {noise:g}; allowed: a "
                          f"number < {n / 10:g}, or a clip-norm > 0")
    threshold = cfg["rlr-threshold"] or default_threshold(f)
    if cfg["aggregation"] == "rlr" and threshold > n:
        source = "" if cfg["rlr-threshold"] else f" (0: twice the {f} expected malicious)"
        raise ConfigError(f"config key 'rlr-threshold': {threshold}{source} is more than the {n} clients per round, "
                          f"so every coordinate's learning rate would be flipped; allowed: 0..{n}")


def _check_shadow(cfg: dict[str, Any]) -> None:
    """A shadow that would never train, or whose filter would drop every client, fails here."""
    if cfg["defense"] != "shadow":
        return
    if cfg["shadow-start"] > cfg["rounds"]:
        raise ConfigError(f"config key 'shadow-start': {cfg['shadow-start']} is after the last of {cfg['rounds']} "
                          f"rounds, so the shadow would never train; allowed: 1..{cfg['rounds']}")
    n, f, factor = cfg["clients-per-round"], expected_malicious(cfg), cfg["shadow-drop-factor"]
    drop = math.floor(factor * f + 1e-9)
    if drop >= n:
        raise ConfigError(f"config key 'shadow-drop-factor': the shadow drops floor({factor:g} x {f} expected "
                          f"malicious) = {drop} of the {n} clients per round, leaving none to train it; allowed: "
                          f"a factor below {n / f:g}, a smaller malicious-fraction, or more clients-per-round")


def _check_combinations(cfg: dict[str, Any]) -> None:
    from fl_defense.data.datasets import SPECS

    spec = SPECS[cfg["dataset"]]
    if cfg["target-label"] >= spec.num_classes:
        raise ConfigError(f"config key 'target-label': {cfg['target-label']} is out of range for {cfg['dataset']}; "
                          f"allowed: 0..{spec.num_classes - 1}")
    if cfg["trigger-size"] > spec.size:
        raise ConfigError(f"config key 'trigger-size': {cfg['trigger-size']} is larger than the {spec.size}x"
                          f"{spec.size} images of {cfg['dataset']}; allowed: 0..{spec.size}")
    if cfg["clients-per-round"] > cfg["num-clients"]:
        raise ConfigError(
            f"config key 'clients-per-round': {cfg['clients-per-round']} is more than "
            f"num-clients ({cfg['num-clients']}); allowed: an integer in [1, num-clients]")
    _check_aggregation(cfg)
    if cfg["min-replies"] > cfg["clients-per-round"]:
        raise ConfigError(f"config key 'min-replies': {cfg['min-replies']} is more than clients-per-round "
                          f"({cfg['clients-per-round']}), so every round would be skipped; allowed: 1..{cfg['clients-per-round']}")
    _check_shadow(cfg)
    for key in ("trigger-pattern", "trigger-mask"):
        path = cfg[key]
        if path.lower().endswith((".npy", ".png")) and not Path(path).is_file():
            raise ConfigError(f"config key '{key}': file {path!r} does not exist")
    if cfg["trigger-mask"] and cfg["attack"] not in ("badnets", "blended"):
        raise ConfigError(f"config key 'trigger-mask': a trigger mask needs attack badnets or blended, not "
                          f"{cfg['attack']!r}")
    if cfg["threat"] == "poisoned-data":
        for key in ("boost", "norm-bound", "attack-schedule", "attack-training"):
            if cfg[key] != OPTIONS[key].default:
                raise ConfigError(f"config key '{key}': {cfg[key]!r} shapes an attacker's own training, but under "
                                  f"threat poisoned-data the poisoned clients are honest; allowed: "
                                  f"{OPTIONS[key].default!r}, or threat malicious-client")
    stages = cfg["abl-isolation-rounds"] + cfg["abl-unlearn-rounds"]
    if cfg["client-defense"] == "abl" and stages > cfg["rounds"]:
        raise ConfigError(f"config key 'abl-unlearn-rounds': abl-isolation-rounds + abl-unlearn-rounds ({stages}) "
                          f"is more than rounds ({cfg['rounds']}); allowed: a sum <= rounds")
    dbd_rounds = cfg["dbd-ssl-rounds"] + cfg["dbd-head-rounds"]
    if cfg["client-defense"] == "dbd" and dbd_rounds >= cfg["rounds"]:
        raise ConfigError(f"config key 'dbd-ssl-rounds': dbd-ssl-rounds + dbd-head-rounds ({dbd_rounds}) leave no "
                          f"semi-supervised round of the {cfg['rounds']} rounds; allowed: a sum < rounds")


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse CLI `--set key=value` items into a dict of strings (typed later by `resolve`)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing or malformed file is a ConfigError naming it as `what` ('config file')."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a flat TOML table of keys, or one under `[tool.flwr.app.config]`."""
    p = Path(path)
    data = read_toml(p, "config file")
    nested = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    table = nested if isinstance(nested, dict) else data
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"config file {str(p)!r}: '{key}' is a table; keys must be flat")
    return dict(table)


def schedule_rounds(spec: str, rounds: int) -> list[int]:
    """Rounds (1-based) selected by an `always|never|every:K|window:A-B,...` spec."""
    if spec == "always":
        return list(range(1, rounds + 1))
    if spec == "never":
        return []
    kind, _, arg = spec.partition(":")
    if kind == "every":
        k = int(arg)
        return [r for r in range(1, rounds + 1) if r % k == 0]
    selected: set[int] = set()
    for window in arg.split(","):
        a, b = (int(x) for x in window.split("-"))
        selected.update(range(max(a, 1), min(b, rounds) + 1))
    return sorted(selected)
