"""The blend scan (`inversion=blend`) and the default scan that runs it with NC and the warp scan
(`inversion=nc+warp+blend`): the target of a real Blended backdoor found, nothing flagged on a clean model or a
patch backdoor, a trigger that does not work on the model is no evidence, and the default's state."""

from __future__ import annotations

import pytest
import torch
from conftest import Backdoored
from torch import nn

from fl_defense.attacks.trigger import Trigger, stamp_from_state
from fl_defense.config import resolve
from fl_defense.inversion import Finding
from fl_defense.inversion.blend import BlendScan
from fl_defense.inversion.combined import NCWarpAndBlend, combine
from fl_defense.registry import TRIGGER_SOURCES

CPU = torch.device("cpu")
FAST = {"nc-images": 1000, "warp-epochs": 2}


def _blend_scan(setting: Backdoored) -> Finding:
    return BlendScan(resolve(FAST)).find(setting.model, setting.clean, 10, CPU, torch.Generator().manual_seed(0))


def test_the_blend_scan_flags_a_blended_target_and_nothing_on_a_clean_model_or_a_patch_backdoor(
        bd_blended: Backdoored, clean_model: Backdoored, bd: Backdoored) -> None:
    found = _blend_scan(bd_blended)
    assert found.flagged == [bd_blended.target], found.record
    assert found.record["blend_opacities"] == [{"alpha": 0.1, "flagged": 1}]
    stamp = found.triggers[bd_blended.target]
    assert isinstance(stamp, Trigger) and stamp.alpha == 0.1 and bool((stamp.mask == 1).all())
    excess = found.record["blend_excess"][bd_blended.target]
    assert excess >= 0.5 and found.record["blend_transfer"][bd_blended.target] < 0.2
    assert bd_blended.asr(bd_blended.model) > 0.9
    x = bd_blended.test_x[bd_blended.test_y != bd_blended.target][:500]
    with torch.no_grad():
        moved = float((bd_blended.model(stamp.apply(x)).argmax(1) == bd_blended.target).float().mean())
    assert moved >= 0.5, "the inverted pattern works on unseen test images too"
    for other in (clean_model, bd):
        assert _blend_scan(other).flagged == [], other


class LinearPath(nn.Module):
    """A CNN plus a strong linear path from the pixels (weights 0.3 x N(0, 1)): a full-image pattern blended in at 0.1
    moves 0.58-1.0 of the images to any label. As a layer the path is re-initialised and
    trained in the clean-set references, which then do not share it; as a buffer they do."""

    def __init__(self, base: nn.Module, mean: torch.Tensor, shared: bool) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("mean", mean)
        weight = torch.randn(10, mean.numel(), generator=torch.Generator().manual_seed(1)) * 0.3
        self.layer = None if shared else nn.Linear(mean.numel(), 10, bias=False)
        if self.layer is None:
            self.register_buffer("weight", weight)
        else:
            self.layer.weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.layer is None else self.layer.weight
        return self.base(x) + (x - self.mean).flatten(1) @ weight.T


@pytest.mark.parametrize("shared, poisoned, flagged, opacities", [
    (False, False, [], [0.1, 0.05]),  # 10 labels flagged at 0.1 without the halving
    (False, True, [3], [0.1, 0.05]),  # 10 at 0.1, the target not first
    (True, True, [3], [0.1]),  # references as loud as the model: the target alone at 0.1
])
def test_the_blend_scan_halves_its_opacity_where_half_the_labels_pass_and_only_there(
        shared: bool, poisoned: bool, flagged: list[int], opacities: list[float], bd_blended: Backdoored,
        clean_model: Backdoored) -> None:
    setting = bd_blended if poisoned else clean_model
    assert setting.target == 3
    loud = LinearPath(setting.model, setting.clean.x.mean(0), shared).eval()
    found = BlendScan(resolve(FAST)).find(loud, setting.clean, 10, CPU, torch.Generator().manual_seed(0))
    assert found.flagged == flagged, found.record
    assert [step["alpha"] for step in found.record["blend_opacities"]] == opacities
    assert min(found.record["blend_share"]) < 0.5 or shared, "the quieter patterns move fewer images"
    if len(opacities) > 1:
        assert found.record["blend_opacities"][0]["flagged"] >= 5


def test_a_label_s_rate_counts_only_from_a_trigger_that_works_on_the_model() -> None:
    """NC flags Bag (8, transfer 0.043) and the target (0, 0.049); the blend scan flags the target (0.026) and its
    pattern for Bag, under the share bar on the model, moved 0.006 on the references (the federated Blended model of
    seed 1): Bag's 0.006 is no evidence, so the target comes first."""
    mask = Trigger(torch.rand(1, 4, 4), torch.rand(1, 4, 4))
    nc = Finding([8, 0], {0: mask, 8: mask}, {"inversion_seconds": 1.0}, [0.049] + [0.3] * 7 + [0.043, 0.3])
    blend = Finding([0], {0: mask, 8: mask}, {"inversion_seconds": 1.0}, [0.026] + [0.3] * 7 + [0.006, 0.3], works=[0])
    both = combine([nc, blend])
    assert both.flagged == [0, 8] and both.record["label_transfer"] == {"0": 0.026, "8": 0.043}
    assert combine([nc, Finding([0], {0: mask}, {"inversion_seconds": 1.0}, [0.026] + [0.3] * 7 + [0.006, 0.3])]
                   ).flagged == [8, 0], "without `works` every rate counts"


def test_the_default_scan_runs_all_three_parts_on_one_set_of_reference_models(bd_blended: Backdoored) -> None:
    cfg = resolve(FAST)
    assert cfg["inversion"] == "nc+warp+blend"
    scan = TRIGGER_SOURCES[cfg["inversion"]](cfg)
    assert isinstance(scan, NCWarpAndBlend) and [p.name for p in scan.parts] == ["nc", "warp", "blend"]
    assert all(p.reference is scan.reference for p in scan.parts)
    found = scan.find(bd_blended.model, bd_blended.clean, 10, CPU, torch.Generator().manual_seed(0))
    assert found.flagged[0] == bd_blended.target, found.record
    assert bd_blended.target in found.record["parts"]["blend"]["flagged"]
    assert len(scan.reference.models) == 3
    restored = TRIGGER_SOURCES[cfg["inversion"]](cfg)
    restored.load_state_dict({**scan.state_dict(), "parts": [{}, {}]}, bd_blended.model)  # an nc+warp checkpoint
    assert len(restored.reference.models) == 3
    again = stamp_from_state(found.triggers[bd_blended.target].state_dict())  # type: ignore[attr-defined]
    x = bd_blended.clean.x[:8]
    assert torch.equal(again.apply(x), found.triggers[bd_blended.target].apply(x))
