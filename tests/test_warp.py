"""The warp scan (`inversion=warp`) and its combination with the NC scan (`inversion=nc+warp`, in the default):
the target of a real WaNet backdoor found and purified, nothing flagged on a clean model, the ordering rule
across scans, and warp stamps in a checkpoint."""

from __future__ import annotations

import torch
from conftest import Backdoored

from fl_defense.attacks.trigger import StampMix, Trigger, stamp_from_state
from fl_defense.config import resolve
from fl_defense.defense import Defender
from fl_defense.inversion import Finding
from fl_defense.inversion.combined import combine
from fl_defense.inversion.reference import LazyRates, flag_by_excess
from fl_defense.inversion.warp import WarpScan, WarpStamp, mean_displacement

CPU = torch.device("cpu")
FAST = {"nc-images": 1000, "warp-epochs": 2}


def _warp_scan(setting: Backdoored) -> Finding:
    return WarpScan(resolve(FAST)).find(setting.model, setting.clean, 10, CPU, torch.Generator().manual_seed(0))


def test_warp_scan_flags_the_target_of_a_warp_backdoor_and_nothing_on_a_clean_model(
        bd_wanet: Backdoored, clean_model: Backdoored, bd: Backdoored) -> None:
    found = _warp_scan(bd_wanet)
    assert found.flagged == [bd_wanet.target], found.record
    stamp = found.triggers[bd_wanet.target]
    assert isinstance(stamp, WarpStamp) and float(mean_displacement(stamp.control)) <= 2.0 + 1e-5
    assert found.record["warp_share"][bd_wanet.target] >= 0.5 > max(
        v for t, v in enumerate(found.record["warp_share"]) if t != bd_wanet.target)
    for other in (clean_model, bd):  # no warp backdoor: a patch backdoor does not answer to a warp either
        assert _warp_scan(other).flagged == [], other


def test_a_warp_is_flagged_by_how_much_more_it_fools_the_model_than_the_clean_reference() -> None:
    """A natural confusion fools both models (label 0: 0.85 against 0.70), a backdoor only the model that learnt
    it, however strongly (label 1 at 0.41 against 0.01; label 2 at 0.85 against 0.11)."""
    read: list[int] = []
    rates = [0.70, 0.01, 0.11, 0.0]
    flagged, excess = flag_by_excess([0.85, 0.41, 0.85, 0.29], LazyRates(lambda t: read.append(t) or rates[t], 4), 0.3)
    assert flagged == [1, 2] and [None if v is None else round(v, 2) for v in excess] == [0.15, 0.4, 0.74, None]
    assert 3 not in read, "a share under the bar rules a label out without its transfer rate"
    assert flag_by_excess([0.85, 0.41], [0.70, 0.01], 0.5)[0] == []


def test_the_default_scan_purifies_a_warp_backdoor_with_mcl(bd_wanet: Backdoored) -> None:
    cfg = resolve({**FAST, "defense": "mcl", "mcl-epochs": 4, "target-label": bd_wanet.target})
    assert cfg["inversion"] == "nc+warp+blend"
    defender = Defender(cfg, bd_wanet.clean, 10, CPU, lambda m: (bd_wanet.ba(m), bd_wanet.asr(m)))
    record = defender(bd_wanet.model, torch.Generator().manual_seed(0)).record
    assert record["true_target_found"] and record["purified"] and "mask_l1" in record and "warp_share" in record
    assert record["asr_before"] > 0.9 and record["asr_after"] < 0.1
    assert record["ba_after"] > record["ba_before"] - 0.05


def test_labels_flagged_by_either_scan_come_lowest_transfer_first_and_share_their_stamps() -> None:
    """NC flags a natural feature (8, transfer 0.08) and the warp scan the target (3, transfer 0.01)."""
    mask = Trigger(torch.rand(1, 4, 4), torch.rand(1, 4, 4))
    warps = {t: WarpStamp(torch.full((1, 2, 2, 2), float(t))) for t in (3, 8)}
    nc = Finding([8], {8: mask, 3: mask}, {"mask_l1": [1.0], "inversion_seconds": 2.0}, [0.5] * 3 + [0.2] + [0.5] * 4
                 + [0.08, 0.5])
    warp = Finding([3], warps, {"warp_share": [0.9], "inversion_seconds": 1.5}, [0.5] * 3 + [0.01] + [0.5] * 6)
    both = combine([nc, warp], ["nc", "warp"])
    assert both.flagged == [3, 8] and both.record["inversion_seconds"] == 3.5
    assert both.record["parts"] == {"nc": {"flagged": [8], "inversion_seconds": 2.0},
                                    "warp": {"flagged": [3], "inversion_seconds": 1.5}}
    assert set(both.record) >= {"mask_l1", "warp_share"}
    assert isinstance(both.triggers[3], StampMix) and both.triggers[3].stamps == (mask, warps[3])
    assert combine([warp]).flagged == [3] and combine([nc, Finding([], {}, {"inversion_seconds": 0.0})]).flagged == [8]


def test_a_label_s_rate_is_the_lowest_of_every_scan_s_trigger_for_it() -> None:
    """The warp scan flags the target (3) at warp transfer 0.07, NC flags Bag (8) at 0.05 and not the target, whose
    NC trigger transferred at 0.006 (the central seed-1 WaNet model's numbers): the target comes first."""
    mask = Trigger(torch.rand(1, 4, 4), torch.rand(1, 4, 4))
    nc = Finding([8], {3: mask, 8: mask}, {"inversion_seconds": 1.0}, [0.3] * 3 + [0.006] + [0.3] * 4 + [0.05, 0.3])
    warp = Finding([3], {3: WarpStamp(torch.zeros(1, 2, 2, 2))}, {"inversion_seconds": 1.0},
                   [0.1] * 3 + [0.07] + [0.1] * 4 + [0.12, 0.1])
    assert combine([nc, warp]).flagged == [3, 8]


def test_a_warp_stamp_round_trips_and_moves_pixels_by_its_offsets() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3, 3] = 1.0
    identity = WarpStamp(torch.zeros(1, 2, 2, 2))
    assert torch.allclose(identity.apply(x), x, atol=1e-6)
    shifted = WarpStamp(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone())  # sample one pixel right
    assert torch.allclose(shifted.apply(x)[..., 3, 2], torch.ones(1), atol=1e-5)
    back = stamp_from_state(shifted.state_dict())
    assert isinstance(back, WarpStamp) and torch.equal(back.apply(x), shifted.apply(x))


def test_warm_warp_scans_start_from_the_last_warps_and_the_pair_keeps_both_parts_state(
        clean_model: Backdoored, bd_wanet: Backdoored) -> None:
    """`inversion=nc+warp` with `warp-warm-epochs`: the pair's state holds the warp part's last warps (the shared
    reference model once), so a resumed run warm-starts as the uninterrupted one does; a warm scan of a WaNet model,
    from a clean model's warps, runs one pass per label and flags the target."""
    from fl_defense.inversion.combined import NCAndWarp

    cfg = resolve({**FAST, "warp-warm-epochs": 1})
    pair = NCAndWarp(cfg)
    pair.find(clean_model.model, clean_model.clean, 10, CPU, torch.Generator().manual_seed(0))
    restored = NCAndWarp(cfg)
    restored.load_state_dict(pair.state_dict(), clean_model.model)
    nc, warp = restored.parts
    assert len(restored.reference.models) == 3 and nc.reference is warp.reference is restored.reference
    assert warp.last is not None
    assert torch.equal(warp.last[3].control, pair.parts[1].last[3].control)
    found = warp.find(bd_wanet.model, bd_wanet.clean, 10, CPU, torch.Generator().manual_seed(1))
    assert found.record["warp_warm"] and found.flagged == [bd_wanet.target], found.record
