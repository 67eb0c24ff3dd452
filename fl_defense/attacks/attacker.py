"""How a malicious client trains on its poisoned batches, selected by `attack-training`.

`plain` is ordinary SGD on the poisoned batches. The others hide or harden the backdoor update and
each is one module: `pgd` (projected onto an L2 ball around the global model, Sun et al. 2019),
`constrain-and-scale` (an anomaly-evasion term in the loss, Bagdasaryan et al. 2020) and
`neurotoxin` (only coordinates that benign clients rarely change, Zhang et al. 2022). Any of them
combines with any trigger (`attack=`) and with the update scaling and bound of `boost` and
`norm-bound`, applied after training. Like the client defenses, a method takes a model and tensors and
may keep state between the client's rounds in `memory`, which the ClientApp stores in `context.state`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fl_defense.attacks.base import Attack
from fl_defense.errors import ConfigError
from fl_defense.registry import ATTACKER_TRAININGS, Option, non_negative, positive
from fl_defense.training import ModelHook, train_local

Memory = dict[str, torch.Tensor]

SCHEDULE_RE = re.compile(r"^(always|never|every:[1-9]\d*|window:\d+-\d+(,\d+-\d+)*)$")


@dataclass(frozen=True)
class Shaping:
    """What a method changes in the local SGD: hooks on gradients and weights, and the weight decay it
    applies itself (None: the optimiser's, from config)."""

    grad_hook: ModelHook | None = None
    step_hook: ModelHook | None = None
    weight_decay: float | None = None


def trainable_anchor(model: torch.nn.Module, global_state: Mapping[str, torch.Tensor],
                     device: torch.device) -> dict[str, torch.Tensor]:
    """The global model's trainable parameters, on `device`: what an attacker measures its update from."""
    return {name: global_state[name].detach().to(device) for name, _ in model.named_parameters()}


ParamsHook = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None]


def anchored(model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], device: torch.device,
             hook: ParamsHook) -> ModelHook:
    """A model hook that calls `hook(parameters, anchor)` with the trained model's parameters and the global
    model's (`trainable_anchor`): how PGD and constrain-and-scale measure their update."""
    anchor = trainable_anchor(model, global_state, device)

    def call(m: torch.nn.Module) -> None:
        hook(dict(m.named_parameters()), anchor)

    return call


class AttackerTraining:
    """Base class: `train` runs the local SGD on poisoned batches with this method's `shaping`."""

    name: ClassVar[str]

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    def shaping(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], images: torch.Tensor,
                labels: torch.Tensor, indices: torch.Tensor, device: torch.device, memory: Memory) -> Shaping:
        return Shaping()

    def scale(self) -> float:
        """The factor of the trained update (model replacement): `boost` unless the method scales itself."""
        return float(self.cfg["boost"])

    def observe(self, model: torch.nn.Module, global_state: Mapping[str, torch.Tensor], memory: Memory) -> None:
        """Called in each of the client's rounds, attacking or not, after training: remember what it needs."""

    def train(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
              attack: Attack, global_state: Mapping[str, torch.Tensor], *, generator: torch.Generator,
              device: torch.device, memory: Memory) -> float:
        """Train `model` (loaded with `global_state`) in place on poisoned batches; the mean loss."""
        cfg = self.cfg
        model.to(device)
        shape = self.shaping(model, global_state, images, labels, indices, device, memory)
        wd = cfg["weight-decay"] if shape.weight_decay is None else shape.weight_decay
        epochs = cfg["malicious-epochs"] or cfg["local-epochs"]
        return train_local(model, images, labels, indices, epochs=epochs, batch_size=cfg["batch-size"],
                           lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=wd, generator=generator,
                           device=device, batch_hook=attack.poison_batch, grad_hook=shape.grad_hook,
                           step_hook=shape.step_hook, amp=cfg["amp"])


@ATTACKER_TRAININGS.register("plain")
class Plain(AttackerTraining):
    """Plain SGD on the poisoned batches."""


def build_attacker_training(cfg: Mapping[str, Any]) -> AttackerTraining:
    """The configured method (config key `attack-training`)."""
    method: AttackerTraining = ATTACKER_TRAININGS[cfg["attack-training"]](cfg)
    return method


ATTACKER_KEYS = ("boost", "norm-bound", "attack-schedule", "attack-training")


def _check_honest_victims(cfg: Mapping[str, Any]) -> None:
    """Under threat poisoned-data the poisoned clients are honest: no attacker key may be set."""
    if cfg["threat"] != "poisoned-data":
        return
    options = {o.key: o for o in ATTACKER_TRAININGS.all_options()}
    for key in ATTACKER_KEYS:
        if cfg[key] != options[key].default:
            raise ConfigError(f"config key '{key}': {cfg[key]!r} shapes an attacker's own training, but under "
                              f"threat poisoned-data the poisoned clients are honest; allowed: "
                              f"{options[key].default!r}, or threat malicious-client")


ATTACKER_TRAININGS.family(options=[
    positive("boost", 1.0, "malicious update scale (model replacement)"),
    non_negative("norm-bound", 0.0, "L2 bound on a malicious update; 0: unbounded"),
    Option("attack-schedule", "always", "rounds in which malicious clients attack",
           check=lambda v: bool(SCHEDULE_RE.match(v)), allowed="always, never, every:K, or window:A-B[,C-D...]"),
    non_negative("malicious-epochs", 0, "local epochs of a malicious client in its attacking rounds (DBA's MNIST "
                 "setting: 10 against the benign 1); 0: local-epochs"),
], checks=[_check_honest_victims])
