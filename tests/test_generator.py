"""The generator source (`inversion=generator`, BTI-DBF's decoupling): its mechanics on a real backdoored CNN.
It does not find this project's backdoors (benchmarks/README.md, trigger detection), so what is checked is what
it guarantees: a near-identity start, a generator kept within its pixel bound, the per-label record, warm
starts, and its stamp and state in a weights-only checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import Backdoored
from torch.nn import functional as F

from fl_defense.attacks.trigger import stamp_from_state
from fl_defense.config import resolve
from fl_defense.inversion.generator import GeneratorInversion, GeneratorStamp, UNet

CPU = torch.device("cpu")


def test_the_generator_starts_near_the_identity() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    assert (UNet(1, 8)(x) - x).abs().max() < 0.05


def test_the_generator_stays_within_its_pixel_bound_and_warm_starts(bd: Backdoored, tmp_path: Path) -> None:
    cfg = resolve({"inversion": "generator", "gen-epochs": 2, "gen-warm-epochs": 1, "gen-images": 300,
                   "gen-width": 8, "nc-reference-epochs": 1})
    source = GeneratorInversion(cfg)
    found = source.find(bd.model, bd.clean, 10, CPU, torch.Generator().manual_seed(0))
    record = found.record
    assert len(record["label_share"]) == 10 and all(0 <= v <= 1 for v in record["label_share"])
    assert record["generator_target"] == max(range(10), key=lambda t: record["label_share"][t])
    assert found.flagged in ([], [record["generator_target"]])
    stamp = found.triggers[record["generator_target"]]
    x = bd.clean.x[:200]
    assert F.mse_loss(stamp.apply(x), x) <= 2 * cfg["gen-pixel-bound"], "the bound holds (a batch may overshoot)"
    first = {k: v.clone() for k, v in source.generator.state_dict().items()}
    torch.save(source.state_dict(), tmp_path / "s.pt")
    again = GeneratorInversion(cfg)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True), bd.model)
    assert all(torch.equal(first[k], v) for k, v in again.generator.state_dict().items())
    assert again.reference.models
    again.find(bd.model, bd.clean, 10, CPU, torch.Generator().manual_seed(1))  # a later call: warm start
    assert any(not torch.equal(first[k], v) for k, v in again.generator.state_dict().items())
    back = stamp_from_state(stamp.state_dict())
    assert isinstance(back, GeneratorStamp) and torch.equal(back.apply(x), stamp.apply(x))
