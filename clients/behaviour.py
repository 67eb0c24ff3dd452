"""What a client does in a round, benign or malicious, as a plain function of config and weights.

Kept free of Flower so that it can be tested and reused (e.g. by the overhead benchmark's
in-process loop); `clients.client_app` only translates messages to and from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from fl_defense.attacks import Attack, attacks_in_round, build_attack, craft_update, malicious_clients
from fl_defense.data import SPECS, FederatedSplit, cached_dataset, cached_split
from fl_defense.models import BackdoorModel, build_model
from fl_defense.training import resolve_device, train_local


@dataclass(frozen=True)
class ClientResult:
    """A client's reply for one round."""

    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    malicious: bool
    attacked: bool


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A seed for one client in one round, independent of which process runs it."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def split_for(cfg: Mapping[str, Any]) -> FederatedSplit:
    """The run's federated split, the same on every process for the same config."""
    return cached_split(cfg["dataset"], cfg["data-root"], cfg["download"], cfg["num-clients"],
                        cfg["clean-fraction"], cfg["partition"], cfg["alpha"], cfg["seed"], cfg["train-fraction"])


@lru_cache(maxsize=2)
def _model(name: str, dataset: str) -> BackdoorModel:
    """One model object per process, reloaded with new weights each round instead of rebuilt."""
    return build_model(name, SPECS[dataset])


def _attack(cfg: Mapping[str, Any]) -> Attack | None:
    spec = SPECS[cfg["dataset"]]
    return build_attack(cfg, spec.shape, spec.num_classes)


def local_update(cfg: Mapping[str, Any], partition_id: int, server_round: int,
                 global_state: dict[str, torch.Tensor]) -> ClientResult:
    """Train the global model on this client's shard; a malicious client poisons and crafts its update."""
    data = cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])
    split = split_for(cfg)
    if not 0 <= partition_id < len(split.clients):
        raise ValueError(f"partition id {partition_id} is outside 0..{len(split.clients) - 1}")
    indices = torch.from_numpy(split.clients[partition_id])
    malicious = partition_id in malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])
    attack = _attack(cfg) if malicious else None
    attacking = attack is not None and attacks_in_round(cfg["attack-schedule"], server_round)

    device = resolve_device(cfg["device"])
    model = _model(cfg["model"], cfg["dataset"])
    model.load_state_dict(global_state)
    generator = torch.Generator().manual_seed(round_seed(cfg["seed"], server_round, partition_id))
    loss = train_local(
        model, data.train_x, data.train_y, indices, epochs=cfg["local-epochs"], batch_size=cfg["batch-size"],
        lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight-decay"], generator=generator,
        device=device, batch_hook=attack.poison_batch if attacking else None)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if attacking:
        trainable = {name for name, _ in model.named_parameters()}
        state = craft_update(state, global_state, trainable, cfg["boost"], cfg["norm-bound"])
    return ClientResult(state, len(indices), loss, malicious, attacking)
