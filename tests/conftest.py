"""Shared fixtures: small, real configurations and a real backdoored (and a clean) CNN."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from fl_defense.attacks import Trigger, build_attack
from fl_defense.config import resolve
from fl_defense.data import dataset_spec, load_dataset, to_float
from fl_defense.metrics import attack_success_rate, clean_accuracy
from fl_defense.models import BackdoorModel, build_model
from fl_defense.purification import CleanSet

CPU = torch.device("cpu")
SPEC = dataset_spec("fashion-mnist")
TARGET = 3


@dataclass
class Backdoored:
    """A SmallCNN (backdoored or clean) with the trigger, the server's clean set, and test images."""

    model: BackdoorModel
    trigger: Trigger
    target: int
    clean: CleanSet
    test_x: torch.Tensor
    test_y: torch.Tensor

    def ba(self, model: BackdoorModel) -> float:
        return clean_accuracy(model, self.test_x, self.test_y, device=CPU)

    def asr(self, model: BackdoorModel) -> float:
        return attack_success_rate(model, self.test_x, self.test_y, self.trigger, self.target, device=CPU)


def _train(poisoned: bool, attack_name: str = "badnets") -> Backdoored:
    """2 central epochs on 6000 real images; when poisoned, 10% of each batch carries the trigger: a 4x4
    BadNets patch, for `blended` full-image noise at alpha 0.2, for `wanet` the default warp."""
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    attack = build_attack(resolve({"attack": attack_name, "trigger-size": 4 if attack_name == "badnets" else 0,
                                   "poison-rate": 0.1, "target-label": TARGET}), SPEC.shape, SPEC.num_classes)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data.train_x), generator=g)
    train, held = perm[:6000], perm[6000:7000]
    x_train, y_train = to_float(data.train_x[train]), data.train_y[train]
    model = build_model("cnn", SPEC).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        for idx in torch.randperm(len(train), generator=g).split(32):
            x, y = x_train[idx], y_train[idx]
            if poisoned:
                x, y = attack.poison_batch(x, y, g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Backdoored(model.eval(), attack.trigger, attack.target,
                      CleanSet(to_float(data.train_x[held]), data.train_y[held]),
                      to_float(data.test_x[:2000]), data.test_y[:2000])


@pytest.fixture(scope="session")
def bd() -> Backdoored:
    """A real backdoored CNN (checked: ASR > 0.9, BA > 0.75)."""
    out = _train(poisoned=True)
    assert out.asr(out.model) > 0.9 and out.ba(out.model) > 0.75, "precondition: the backdoor was planted"
    return out


@pytest.fixture(scope="session")
def bd_blended() -> Backdoored:
    """The same CNN with a Blended backdoor to the same target (checked: ASR > 0.9, BA > 0.75)."""
    out = _train(poisoned=True, attack_name="blended")
    assert out.asr(out.model) > 0.9 and out.ba(out.model) > 0.75, "precondition: the backdoor was planted"
    return out


@pytest.fixture(scope="session")
def bd_wanet() -> Backdoored:
    """The same CNN with a WaNet backdoor (the default warp, s 4) to the same target (checked: ASR > 0.9)."""
    out = _train(poisoned=True, attack_name="wanet")
    assert out.asr(out.model) > 0.9 and out.ba(out.model) > 0.75, "precondition: the backdoor was planted"
    return out


@pytest.fixture(scope="session")
def clean_model() -> Backdoored:
    """The same CNN trained on clean data (checked: the trigger does nothing, BA > 0.75)."""
    out = _train(poisoned=False)
    assert out.asr(out.model) < 0.1 and out.ba(out.model) > 0.75
    return out


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the same float results on any machine load (Ray actors set their own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_cfg() -> dict[str, Any]:
    """A tiny but real federated setting on Fashion-MNIST: 4 clients on 5% of the data."""
    return resolve({"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05, "rounds": 2,
                    "malicious-fraction": 0.25, "device": "cpu"})
