"""What a client does in a round, benign or malicious, as a plain function of config and weights.

Two threat models (`threat`): under `malicious-client` the malicious clients run the attacker's
code (poisoned batches, crafted updates); under `poisoned-data` they are honest, but a third party
poisoned their stored data once. Every honest client trains with the configured `client-defense`.

Kept free of Flower so that it can be tested and reused (e.g. by an in-process loop);
`fl_defense.clients.client_app` only translates messages and the client's memory to and from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from fl_defense.attacks import (
    Attack, PoisonedData, attacks_in_round, build_attack, build_attacker_training, craft_update, malicious_clients,
    malicious_rank, poison_data,
)
from fl_defense.client_defenses import Memory, build_client_defense
from fl_defense.data import cached_dataset, dataset_spec, split_for
from fl_defense.models import BackdoorModel, build_model
from fl_defense.training import resolve_device, train_local


@dataclass(frozen=True)
class ClientResult:
    """A client's reply for one round. `malicious`: one of the malicious-fraction clients (an attacker, or
    a victim of poisoned data); `attacked`: it attacked, or trained on poisoned data, this round."""

    state: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    malicious: bool
    attacked: bool


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A seed for one client in one round, independent of which process runs it."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


@lru_cache(maxsize=2)
def _model(name: str, dataset: str) -> BackdoorModel:
    """One model object per process, reloaded with new weights each round instead of rebuilt."""
    return build_model(name, dataset_spec(dataset))


def _attack(cfg: Mapping[str, Any]) -> Attack | None:
    spec = dataset_spec(cfg["dataset"])
    return build_attack(cfg, spec.shape, spec.num_classes)


def poisoned_shard(cfg: Mapping[str, Any], partition_id: int) -> PoisonedData:
    """This client's shard as the third party left it (threat `poisoned-data`): the same on every call."""
    return _poisoned_shard(tuple(sorted(cfg.items())), partition_id)


@lru_cache(maxsize=4)
def _poisoned_shard(items: tuple[tuple[str, Any], ...], partition_id: int) -> PoisonedData:
    """Poisoned once per process and client: a copy of the shard (a few MB), not of the whole training set."""
    cfg = dict(items)
    attack = _attack(cfg)
    if attack is None:
        raise ValueError("attack=none poisons no data")
    evil = malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])
    if partition_id in evil:
        attack = attack.for_client(malicious_rank(partition_id, evil), len(evil))
    data = cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])
    indices = torch.from_numpy(split_for(cfg).clients[partition_id])
    seed = int(np.random.SeedSequence([cfg["seed"], partition_id, 5]).generate_state(1)[0])
    return poison_data(data.train_x[indices], data.train_y[indices], attack, torch.Generator().manual_seed(seed))


def local_update(cfg: Mapping[str, Any], partition_id: int, server_round: int,
                 global_state: dict[str, torch.Tensor], memory: Memory) -> ClientResult:
    """Train the global model on this client's shard: an attacker poisons batches and crafts its update,
    an honest client runs the client defense (on its poisoned copy of the shard if it is a victim).

    `memory` is what the client keeps between its rounds (its client defense's or attacker training's
    state, e.g. ABL's isolated samples, the global model Neurotoxin last saw); it is updated
    in place and must be the same dict, or a faithful copy, on the client's next call.
    """
    data = cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])
    split = split_for(cfg)
    if not 0 <= partition_id < len(split.clients):
        raise ValueError(f"partition id {partition_id} is outside 0..{len(split.clients) - 1}")
    indices = torch.from_numpy(split.clients[partition_id])
    evil = malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])
    malicious = partition_id in evil
    attack = _attack(cfg) if malicious else None

    device = resolve_device(cfg["device"])
    model = _model(cfg["model"], cfg["dataset"])
    model.load_state_dict(global_state)
    generator = torch.Generator().manual_seed(round_seed(cfg["seed"], server_round, partition_id))
    if attack is not None and cfg["threat"] == "malicious-client":
        attacking = attacks_in_round(cfg["attack-schedule"], server_round)
        method = build_attacker_training(cfg)
        if attacking:
            local = attack.for_client(malicious_rank(partition_id, evil), len(evil))
            loss = method.train(model, data.train_x, data.train_y, indices, local, global_state,
                                generator=generator, device=device, memory=memory)
        else:
            loss = train_local(model, data.train_x, data.train_y, indices, epochs=cfg["local-epochs"],
                               batch_size=cfg["batch-size"], lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight-decay"], generator=generator, device=device,
                               amp=cfg["amp"])
        method.observe(model, global_state, memory)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if attacking:
            trainable = {name for name, _ in model.named_parameters()}
            state = craft_update(state, global_state, trainable, method.scale(), cfg["norm-bound"])
        return ClientResult(state, len(indices), loss, malicious, attacking)

    images, labels, poisoned = data.train_x, data.train_y, attack is not None
    if poisoned:
        shard = poisoned_shard(cfg, partition_id)
        images, labels, indices = shard.images, shard.labels, torch.arange(len(shard.images))
    loss = build_client_defense(cfg).train(model, images, labels, indices, server_round=server_round,
                                           generator=generator, device=device, memory=memory)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return ClientResult(state, len(indices), loss, malicious, poisoned)
