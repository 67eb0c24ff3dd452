"""A client's round: benign, malicious and poisoned-data training on a real Fashion-MNIST shard, and the
ClientApp's keeping of a client's memory between rounds."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from fl_defense.attacks import build_attack, malicious_clients, poison_data
from fl_defense.client_defenses.abl import ISOLATED, SUSPECTS
from fl_defense.clients.behaviour import local_update, poisoned_shard, round_seed
from fl_defense.clients.client_app import MEMORY_KEY, load_memory, save_memory
from fl_defense.clients.client_app import train as client_train
from fl_defense.config import resolve
from fl_defense.data import cached_dataset, dataset_spec, split_for
from fl_defense.models import build_model
from fl_defense.training import train_local


def _global_state(cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(cfg["model"], dataset_spec(cfg["dataset"])).state_dict()


def test_benign_and_malicious_clients(small_cfg: dict[str, Any]) -> None:
    bad = malicious_clients(small_cfg["num-clients"], small_cfg["malicious-fraction"], small_cfg["seed"])
    assert len(bad) == 1
    evil = next(iter(bad))
    good = next(i for i in range(small_cfg["num-clients"]) if i not in bad)
    g = _global_state(small_cfg)

    benign = local_update(small_cfg, good, 1, g, {})
    assert not benign.malicious and not benign.attacked
    assert benign.num_examples == len(split_for(small_cfg).clients[good])
    assert set(benign.state) == set(g)
    assert any(not torch.equal(benign.state[k], g[k]) for k in g)

    attacker = local_update(small_cfg, evil, 1, g, {})
    assert attacker.malicious and attacker.attacked

    idle = local_update({**small_cfg, "attack-schedule": "window:5-6"}, evil, 1, g, {})
    assert idle.malicious and not idle.attacked


def test_same_seed_same_update(small_cfg: dict[str, Any]) -> None:
    g = _global_state(small_cfg)
    a = local_update(small_cfg, 0, 3, g, {})
    b = local_update(small_cfg, 0, 3, g, {})
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    c = local_update(small_cfg, 0, 4, g, {})
    assert any(not torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_boosted_update_is_bounded(small_cfg: dict[str, Any]) -> None:
    cfg = {**small_cfg, "boost": 5.0, "norm-bound": 1.0}
    evil = next(iter(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])))
    g = _global_state(cfg)
    out = local_update(cfg, evil, 1, g, {})
    model = build_model(cfg["model"], dataset_spec(cfg["dataset"]))
    trainable = [n for n, _ in model.named_parameters()]
    norm = torch.sqrt(sum(((out.state[k] - g[k]).double() ** 2).sum() for k in trainable))
    assert abs(norm.item() - 1.0) < 1e-4


def _plain_sgd(cfg: dict[str, Any], images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, pid: int,
               server_round: int, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What an honest client without a client defense must compute: the run's SGD from the round seed."""
    model = build_model(cfg["model"], dataset_spec(cfg["dataset"]))
    model.load_state_dict(g)
    train_local(model, images, labels, indices, epochs=cfg["local-epochs"], batch_size=cfg["batch-size"], lr=cfg["lr"],
                momentum=cfg["momentum"], weight_decay=cfg["weight-decay"],
                generator=torch.Generator().manual_seed(round_seed(cfg["seed"], server_round, pid)),
                device=torch.device("cpu"))
    return model.state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_honest_client_is_plain_sgd_on_its_shard(small_cfg: dict[str, Any]) -> None:
    """The default (client-defense none) honest update is exactly the run's SGD, under both threat models."""
    bad = malicious_clients(small_cfg["num-clients"], small_cfg["malicious-fraction"], small_cfg["seed"])
    good = next(i for i in range(small_cfg["num-clients"]) if i not in bad)
    data = cached_dataset("fashion-mnist", "", True)
    g = _global_state(small_cfg)
    expected = _plain_sgd(small_cfg, data.train_x, data.train_y, torch.from_numpy(split_for(small_cfg).clients[good]),
                          good, 2, g)
    assert _same(local_update(small_cfg, good, 2, g, {}).state, expected)
    assert _same(local_update({**small_cfg, "threat": "poisoned-data"}, good, 2, g, {}).state, expected)


def test_poison_data_stamps_an_exact_seeded_share() -> None:
    data = cached_dataset("fashion-mnist", "", True)
    attack = build_attack(resolve({"poison-rate": 0.3, "target-label": 2}), dataset_spec("fashion-mnist").shape, 10)
    assert attack is not None
    x, y = data.train_x[:500], data.train_y[:500]
    x0, y0 = x.clone(), y.clone()
    a = poison_data(x, y, attack, torch.Generator().manual_seed(7))
    assert torch.equal(x, x0) and torch.equal(y, y0)  # the inputs are left alone
    assert len(a.poisoned) == 150 and len(torch.unique(a.poisoned)) == 150
    assert a.images.dtype == torch.uint8 and a.images.shape == x.shape
    assert (a.labels[a.poisoned] == 2).all()
    clean = ~torch.isin(torch.arange(500), a.poisoned)
    assert torch.equal(a.images[clean], x[clean]) and torch.equal(a.labels[clean], y[clean])
    checker = attack.trigger.pattern[:, -4:, -4:] * 255  # the BadNets 4x4 checkerboard, bottom right
    assert (a.images[a.poisoned][:, :, -4:, -4:] == checker.to(torch.uint8)).all()
    assert torch.equal(a.images[a.poisoned][:, :, :-4], x[a.poisoned][:, :, :-4])

    b = poison_data(x, y, attack, torch.Generator().manual_seed(7))
    assert torch.equal(a.poisoned, b.poisoned) and torch.equal(a.images, b.images)
    assert not torch.equal(a.poisoned, poison_data(x, y, attack, torch.Generator().manual_seed(8)).poisoned)


def test_poisoned_data_victims_are_honest_clients_on_poisoned_shards(small_cfg: dict[str, Any]) -> None:
    cfg = {**small_cfg, "threat": "poisoned-data"}
    evil = next(iter(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])))
    shard = poisoned_shard(cfg, evil)
    n = len(split_for(cfg).clients[evil])
    assert len(shard.images) == n and len(shard.poisoned) == round(0.5 * n)
    assert shard is poisoned_shard(dict(cfg), evil)  # poisoned once per process
    other_seed = poisoned_shard({**cfg, "seed": 1}, evil)
    assert not torch.equal(shard.poisoned, other_seed.poisoned[:len(shard.poisoned)])

    g = _global_state(cfg)
    victim = local_update(cfg, evil, 1, g, {})
    assert victim.malicious and victim.attacked and victim.num_examples == n
    assert _same(victim.state, _plain_sgd(cfg, shard.images, shard.labels, torch.arange(n), evil, 1, g))

    untouched = local_update({**cfg, "attack": "none"}, evil, 1, g, {})
    assert untouched.malicious and not untouched.attacked
    data = cached_dataset("fashion-mnist", "", True)
    assert _same(untouched.state, _plain_sgd(cfg, data.train_x, data.train_y,
                                             torch.from_numpy(split_for(cfg).clients[evil]), evil, 1, g))


def test_memory_round_trips_through_node_state() -> None:
    state = RecordDict()
    assert load_memory(state) == {}
    memory = {ISOLATED: torch.tensor([9, 2, 40_000], dtype=torch.int64), "head.weight": torch.randn(3, 4)}
    save_memory(state, memory)
    back = load_memory(state)
    assert back.keys() == memory.keys()
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in memory.items())


def _train_message(cfg: dict[str, Any], server_round: int, g: dict[str, torch.Tensor]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(g),
                          "config": ConfigRecord({"run-config": json.dumps(cfg), "server-round": server_round})})
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, content=content)


def test_client_app_keeps_abl_memory_across_rounds(small_cfg: dict[str, Any]) -> None:
    """The ClientApp's train handler stores the isolated samples in the node state and unlearns on them later."""
    cfg = {**small_cfg, "client-defense": "abl", "threat": "poisoned-data", "abl-isolation-rounds": 1,
           "abl-unlearn-rounds": 1, "rounds": 3}
    evil = next(iter(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])))
    context = Context(run_id=1, node_id=7, node_config={"partition-id": evil}, state=RecordDict(), run_config={})
    g = _global_state(cfg)
    for server_round in (1, 2):
        reply = client_train(_train_message(cfg, server_round, g), context)
        assert not reply.has_error()
        g = reply.content["arrays"].to_torch_state_dict()
        assert dict(reply.content["client"]) == {"partition-id": evil}, "a reply says nothing of itself but its partition"
    memory = load_memory(context.state)
    isolated = memory[ISOLATED]
    n = len(split_for(cfg).clients[evil])
    assert len(isolated) == round(cfg["abl-isolation-ratio"] * n)
    assert MEMORY_KEY in context.state

    # Round 3 trains as round 2 left it (isolated and flagged samples), as local_update does with the same memory.
    reply = client_train(_train_message(cfg, 3, g), context)
    direct = local_update(resolve(cfg), evil, 3, g, {k: v.clone() for k, v in memory.items()})
    assert _same(reply.content["arrays"].to_torch_state_dict(), direct.state)
    assert torch.equal(load_memory(context.state)[ISOLATED], isolated)
    assert torch.equal(load_memory(context.state)[SUSPECTS], memory[SUSPECTS])


def test_centralised_setting_one_client_holds_all_data() -> None:
    cfg = resolve({"num-clients": 1, "clients-per-round": 1, "train-fraction": 0.02, "malicious-fraction": 1.0,
                   "threat": "poisoned-data", "device": "cpu"})
    split = split_for(cfg)
    assert len(split.clients) == 1
    held_out = len(split.clean)
    n = len(split.clients[0])
    assert n == round(0.02 * (len(cached_dataset("fashion-mnist", "", True).train_y) - held_out))
    assert not np.isin(split.clients[0], split.clean).any()
    out = local_update(cfg, 0, 1, _global_state(cfg), {})
    assert out.malicious and out.attacked and out.num_examples == n
    assert len(poisoned_shard(cfg, 0).poisoned) == round(0.5 * n)
    with pytest.raises(ValueError, match="outside 0..0"):
        local_update(cfg, 1, 1, _global_state(cfg), {})


def test_amp_client_update_is_float32_close_to_full_precision_and_learns(small_cfg: dict[str, Any]) -> None:
    """`amp` (bfloat16 autocast on CPU) keeps float32 weights, follows the float32 update, and lowers the loss;
    attacker hooks see float32 gradients."""
    g = _global_state(small_cfg)
    full = local_update(small_cfg, 0, 2, g, {})
    mixed = local_update({**small_cfg, "amp": True}, 0, 2, g, {})
    assert all(mixed.state[k].dtype == g[k].dtype for k in g)
    assert all(torch.isfinite(v).all() for v in mixed.state.values())
    delta_full = torch.cat([(full.state[k] - g[k]).flatten() for k in g if g[k].is_floating_point()])
    delta_mixed = torch.cat([(mixed.state[k] - g[k]).flatten() for k in g if g[k].is_floating_point()])
    assert torch.nn.functional.cosine_similarity(delta_full, delta_mixed, dim=0) > 0.9
    data = cached_dataset("fashion-mnist", "", True)
    model = build_model(small_cfg["model"], dataset_spec(small_cfg["dataset"]))
    model.load_state_dict(g)
    seen: list[torch.dtype] = []
    indices = torch.arange(512)
    kwargs = {"epochs": 1, "batch_size": 32, "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0,
              "device": torch.device("cpu"), "amp": True}
    first = train_local(model, data.train_x, data.train_y, indices, generator=torch.Generator().manual_seed(0),
                        grad_hook=lambda m: seen.extend(p.grad.dtype for p in m.parameters()), **kwargs)
    second = train_local(model, data.train_x, data.train_y, indices, generator=torch.Generator().manual_seed(1),
                         **kwargs)
    assert set(seen) == {torch.float32} and second < first
