"""MCL: the loss against a hand-computed value, and purification of a real backdoored CNN."""

from __future__ import annotations

import math

import pytest
import torch

from fl_defense.config import resolve
from fl_defense.purification import build_purifier
from fl_defense.purification.mcl import mcl_loss


def test_mcl_loss_matches_hand_computation() -> None:
    anchor = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    positive = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    negative = torch.tensor([[0.0, 3.0], [-1.0, -1.0]])
    tau = 0.5
    # row 1: cos(a,p)=1, cos(a,n)=0; row 2: cos(a,p)=1/sqrt(2), cos(a,n)=-1
    row1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    c = 1 / math.sqrt(2)
    row2 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(-1 / tau)))
    assert mcl_loss(anchor, positive, negative, tau).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


@pytest.mark.parametrize("ce_weight", [1.0, 0.0])
def test_mcl_removes_the_backdoor_and_keeps_ba(bd, ce_weight: float) -> None:  # noqa: ANN001 - fixture
    cfg = resolve({"defense": "mcl", "mcl-epochs": 4, "mcl-ce-weight": ce_weight})
    before = {k: v.clone() for k, v in bd.model.state_dict().items()}
    purified = build_purifier(cfg).purify(bd.model, bd.clean, bd.trigger, torch.device("cpu"),
                                          torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in bd.model.state_dict().items()), "input model modified"
    assert bd.asr(purified) < 0.1
    if ce_weight > 0:
        assert bd.ba(purified) > bd.ba(bd.model) - 0.05
