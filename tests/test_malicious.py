"""Who is malicious, when they attack, and how their update is crafted (boost, norm bound)."""

from __future__ import annotations

import pytest
import torch

from fl_defense.attacks import attacks_in_round, craft_update, malicious_clients


def test_malicious_clients_are_seeded_and_sized() -> None:
    a = malicious_clients(10, 0.2, seed=1)
    assert len(a) == 2 and a == malicious_clients(10, 0.2, seed=1)
    assert all(0 <= i < 10 for i in a)
    assert malicious_clients(10, 0.0, seed=1) == frozenset()
    assert len(malicious_clients(10, 1.0, seed=1)) == 10
    assert len({malicious_clients(100, 0.1, seed=s) for s in range(5)}) > 1


@pytest.mark.parametrize(("spec", "attacking"), [
    ("always", {1, 2, 3, 4, 5, 6}), ("every:2", {2, 4, 6}), ("window:2-3,6-9", {2, 3, 6}), ("never", set()),
])
def test_attack_schedule(spec: str, attacking: set[int]) -> None:
    assert {r for r in range(1, 7) if attacks_in_round(spec, r)} == attacking


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    global_ = {"w": torch.zeros(4), "bn.running_var": torch.ones(2)}
    local = {"w": torch.tensor([3.0, 0.0, 4.0, 0.0]), "bn.running_var": torch.tensor([0.5, 0.5])}
    return local, global_


def test_boost_scales_only_trainable_parameters() -> None:
    local, global_ = _states()
    out = craft_update(local, global_, {"w"}, boost=10.0, norm_bound=0.0)
    assert torch.equal(out["w"], torch.tensor([30.0, 0.0, 40.0, 0.0]))
    assert torch.equal(out["bn.running_var"], local["bn.running_var"])


def test_norm_bound_clips_the_update_after_boost() -> None:
    local, global_ = _states()
    out = craft_update(local, global_, {"w"}, boost=10.0, norm_bound=5.0)
    assert torch.linalg.vector_norm(out["w"] - global_["w"]).item() == pytest.approx(5.0)
    assert torch.allclose(out["w"], torch.tensor([3.0, 0.0, 4.0, 0.0]))
    small = craft_update(local, global_, {"w"}, boost=1.0, norm_bound=100.0)
    assert torch.equal(small["w"], local["w"])
