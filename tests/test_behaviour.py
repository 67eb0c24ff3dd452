"""A client's round, without Flower: benign and malicious training on a real Fashion-MNIST shard."""

from __future__ import annotations

from typing import Any

import torch

from clients.behaviour import local_update, split_for
from fl_defense.attacks import malicious_clients
from fl_defense.data import SPECS
from fl_defense.models import build_model


def _global_state(cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(cfg["model"], SPECS[cfg["dataset"]]).state_dict()


def test_benign_and_malicious_clients(small_cfg: dict[str, Any]) -> None:
    bad = malicious_clients(small_cfg["num-clients"], small_cfg["malicious-fraction"], small_cfg["seed"])
    assert len(bad) == 1
    evil = next(iter(bad))
    good = next(i for i in range(small_cfg["num-clients"]) if i not in bad)
    g = _global_state(small_cfg)

    benign = local_update(small_cfg, good, 1, g)
    assert not benign.malicious and not benign.attacked
    assert benign.num_examples == len(split_for(small_cfg).clients[good])
    assert set(benign.state) == set(g)
    assert any(not torch.equal(benign.state[k], g[k]) for k in g)

    attacker = local_update(small_cfg, evil, 1, g)
    assert attacker.malicious and attacker.attacked

    idle = local_update({**small_cfg, "attack-schedule": "window:5-6"}, evil, 1, g)
    assert idle.malicious and not idle.attacked


def test_same_seed_same_update(small_cfg: dict[str, Any]) -> None:
    g = _global_state(small_cfg)
    a = local_update(small_cfg, 0, 3, g)
    b = local_update(small_cfg, 0, 3, g)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    c = local_update(small_cfg, 0, 4, g)
    assert any(not torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_boosted_update_is_bounded(small_cfg: dict[str, Any]) -> None:
    cfg = {**small_cfg, "boost": 5.0, "norm-bound": 1.0}
    evil = next(iter(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])))
    g = _global_state(cfg)
    out = local_update(cfg, evil, 1, g)
    model = build_model(cfg["model"], SPECS[cfg["dataset"]])
    trainable = [n for n, _ in model.named_parameters()]
    norm = torch.sqrt(sum(((out.state[k] - g[k]).double() ** 2).sum() for k in trainable))
    assert abs(norm.item() - 1.0) < 1e-4
