"""ABL as an honest client's training code: the LGA loss, isolation on real poisoned data, the round schedule."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.abl_isolation import purity
from clients.behaviour import poisoned_shard
from fl_defense.attacks import PoisonedData, build_attack, poison_data
from fl_defense.attacks.malicious import malicious_clients
from fl_defense.client_defenses import Memory, build_client_defense
from fl_defense.client_defenses import abl as abl_module
from fl_defense.client_defenses.abl import ISOLATED, lga_loss, per_sample_loss, unlearn_loss
from fl_defense.config import resolve
from fl_defense.data import cached_dataset, dataset_spec
from fl_defense.models import BackdoorModel, build_model

CPU = torch.device("cpu")
SPEC = dataset_spec("fashion-mnist")


@pytest.mark.parametrize(("loss", "gamma", "value", "grad"), [
    (0.8, 0.5, 0.8, 1.0),     # above gamma: plain descent
    (0.2, 0.5, -0.2, -1.0),   # below gamma: ascent, the loss is pushed back up to gamma
    (2.5, 1.0, 2.5, 1.0),
    (0.0, 0.5, 0.0, -1.0),
])
def test_lga_loss_by_hand(loss: float, gamma: float, value: float, grad: float) -> None:
    x = torch.tensor(loss, requires_grad=True)
    out = lga_loss(x, gamma)
    out.backward()
    assert out.item() == pytest.approx(value)
    assert x.grad is not None and x.grad.item() == pytest.approx(grad)


def test_unlearn_loss_ascends_only_on_samples_above_chance() -> None:
    """-CE's gradient for a sample whose label is still likelier than chance, none for one already below it."""
    logits = torch.tensor([[3.0, 0.0, 0.0], [-3.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    loss = unlearn_loss(logits, labels)
    loss.backward()
    ce = torch.nn.functional.cross_entropy(logits.detach(), labels, reduction="none")
    assert ce[0] < math.log(3) < ce[1]
    assert loss.item() == pytest.approx(-ce[0].item() / 2)
    p0 = torch.softmax(logits.detach()[0], 0)
    assert logits.grad is not None
    assert torch.allclose(logits.grad[0], -(p0 - torch.tensor([1.0, 0.0, 0.0])) / 2)
    assert torch.equal(logits.grad[1], torch.zeros(3))


@dataclass
class Isolated:
    """A poisoned client's real data after ABL's LGA rounds and its isolation round."""

    cfg: dict[str, Any]
    data: PoisonedData
    model: BackdoorModel
    memory: Memory


@pytest.fixture(scope="module")
def isolated() -> Isolated:
    """1000 real Fashion-MNIST images, 10% BadNets-poisoned; 2 LGA rounds from scratch, then isolation of 5%."""
    cfg = resolve({"client-defense": "abl", "abl-isolation-rounds": 2, "abl-isolation-ratio": 0.05,
                   "abl-unlearn-rounds": 2, "rounds": 6, "poison-rate": 0.1, "device": "cpu"})
    data = cached_dataset("fashion-mnist", "", True)
    attack = build_attack(cfg, SPEC.shape, SPEC.num_classes)
    assert attack is not None
    poisoned = poison_data(data.train_x[:1000], data.train_y[:1000], attack, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model("cnn", SPEC)
    defense, memory = build_client_defense(cfg), {}
    indices = torch.arange(1000)
    for server_round in range(1, 4):
        defense.train(model, poisoned.images, poisoned.labels, indices, server_round=server_round,
                      generator=torch.Generator().manual_seed(server_round), device=CPU, memory=memory)
    return Isolated(cfg, poisoned, model, memory)


def test_isolated_samples_are_mostly_the_poisoned_ones(isolated: Isolated) -> None:
    iso = isolated.memory[ISOLATED]
    assert len(iso) == 50 and len(torch.unique(iso)) == 50
    precision = torch.isin(iso, isolated.data.poisoned).float().mean().item()
    assert precision >= 0.8, f"isolation precision {precision:.2f}; the poison share is 0.10"


def test_unlearning_raises_the_loss_of_the_isolated_samples(isolated: Isolated) -> None:
    iso = isolated.memory[ISOLATED]
    model = build_model("cnn", SPEC)
    model.load_state_dict(isolated.model.state_dict())
    x, y = isolated.data.images, isolated.data.labels
    before = per_sample_loss(model, x, y, iso, 256, CPU).mean().item()
    memory = dict(isolated.memory)
    build_client_defense(isolated.cfg).train(model, x, y, torch.arange(len(x)), server_round=isolated.cfg["rounds"],
                                             generator=torch.Generator().manual_seed(0), device=CPU, memory=memory)
    assert torch.equal(memory[ISOLATED], iso)
    assert per_sample_loss(model, x, y, iso, 256, CPU).mean().item() > before


def test_unlearning_stays_finite_where_the_plain_ascent_diverges(isolated: Isolated) -> None:
    """Many ascent steps on the isolated samples: -CE blows up to NaN, the bounded loss leaves them below chance
    and the weights finite (the centralised BadNets run's first unlearning round ended in NaN before the bound)."""
    iso = isolated.memory[ISOLATED]
    x, y = isolated.data.images, isolated.data.labels
    ends = {}
    plain = lambda lg, t: -torch.nn.functional.cross_entropy(lg, t)  # noqa: E731
    for name, loss_fn in (("plain", plain), ("bounded", unlearn_loss)):
        model = build_model("cnn", SPEC)
        model.load_state_dict(isolated.model.state_dict())
        abl_module.train_local(model, x, y, iso, epochs=60, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.0,
                               generator=torch.Generator().manual_seed(0), device=CPU, loss_fn=loss_fn)
        ends[name] = (all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()),
                      per_sample_loss(model, x, y, iso, 256, CPU))
    assert not ends["plain"][0]
    finite, losses = ends["bounded"]
    assert finite and losses.median().item() > math.log(10)


def test_round_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """LGA on all samples; at the client's first later round an LGA pass on a copy, isolation, then training on
    the rest; in the last rounds gradient ascent on what was isolated."""
    calls: list[tuple[torch.Tensor, float, float]] = []
    logits, target = torch.tensor([[4.0, 0.0]]), torch.tensor([0])

    def spy(model: BackdoorModel, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
            lr: float, loss_fn: Any, **_: Any) -> float:
        calls.append((indices, lr, loss_fn(logits, target).item()))
        return 0.0

    monkeypatch.setattr(abl_module, "train_local", spy)
    cfg = resolve({"client-defense": "abl", "abl-isolation-rounds": 2, "abl-unlearn-rounds": 2, "rounds": 7,
                   "abl-isolation-ratio": 0.25, "abl-gamma": 0.5, "abl-unlearn-lr": 1e-3, "device": "cpu"})
    data = cached_dataset("fashion-mnist", "", True)
    indices = torch.arange(100, 140)
    defense, memory = build_client_defense(cfg), {}
    model = build_model("cnn", SPEC)
    for server_round in (1, 2, 4, 5, 6, 7):  # not sampled in round 3
        defense.train(model, data.train_x, data.train_y, indices, server_round=server_round,
                      generator=torch.Generator(), device=CPU, memory=memory)

    ce = torch.nn.functional.cross_entropy(logits, target).item()  # below gamma: LGA ascends
    (i1, lr1, l1), (i2, _, l2), (i3, _, l3), (i4, lr4, l4), (i5, _, _), (i6, lr6, l6), (i7, _, _) = calls
    assert all(torch.equal(i, indices) for i in (i1, i2, i3)) and lr1 == cfg["lr"]
    assert l1 == l2 == l3 == pytest.approx(-ce)  # two LGA rounds, then the LGA pass before isolating
    iso = memory[ISOLATED]
    assert len(iso) == 10 and torch.isin(iso, indices).all()
    assert torch.equal(i4, i5) and len(i4) == 30 and not torch.isin(i4, iso).any()
    assert lr4 == cfg["lr"] and l4 == pytest.approx(ce)
    assert torch.equal(i6, iso) and torch.equal(i7, iso)
    assert lr6 == cfg["abl-unlearn-lr"] and l6 == pytest.approx(-ce)  # gradient ascent


def test_isolation_purity_replay_counts_the_poisoned_among_the_isolated(tmp_path: Path) -> None:
    """benchmarks.abl_isolation replays each victim's seeded poisoning: of isolated samples made of 7 poisoned and
    5 clean positions of the victim's real shard it counts 7, and it reads the last round's memory."""
    cfg = resolve({"threat": "poisoned-data", "client-defense": "abl", "num-clients": 4, "clients-per-round": 4,
                   "malicious-fraction": 0.25, "train-fraction": 0.05, "seed": 3, "out-dir": str(tmp_path)})
    (victim,) = malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])
    shard = poisoned_shard(cfg, victim)
    clean = torch.from_numpy(np.setdiff1d(np.arange(len(shard.labels)), shard.poisoned.numpy()))
    isolated = torch.cat([shard.poisoned[:7], clean[:5]]).sort().values
    folder = tmp_path / "client-state" / str(victim)
    folder.mkdir(parents=True)
    torch.save({ISOLATED: shard.poisoned[:1]}, folder / "client-defense-memory-r9.pt")
    torch.save({ISOLATED: isolated}, folder / "client-defense-memory-r10.pt")
    (tmp_path / "results.json").write_text(json.dumps({"config": cfg, "rounds": []}))
    assert purity(tmp_path) == [(victim, 7, 12)]
