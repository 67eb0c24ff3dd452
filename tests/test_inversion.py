"""Neural Cleanse: the MAD statistic by hand, the target found on a backdoored CNN, nothing on a clean one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fl_defense.attacks.trigger import StampMix
from fl_defense.config import resolve
from fl_defense.defense import DefenseMemory, defense_rounds, invert_and_flag, purification_trigger, run_defense
from fl_defense.inversion import LabelInversion, NCSettings, ScanResult, anomaly_indices, invert
from fl_defense.inversion.ray_scan import _POOL, pool_size

CPU = torch.device("cpu")


def test_anomaly_index_by_hand() -> None:
    norms = np.array([10.0, 50.0, 52.0, 48.0, 55.0])
    # median 50; |x - 50| = 40, 0, 2, 2, 5 -> median 2; MAD = 1.4826 * 2
    idx = anomaly_indices(norms)
    assert idx[0] == pytest.approx(40 / (1.4826 * 2))
    assert idx[4] == pytest.approx(-5 / (1.4826 * 2))
    log_idx = anomaly_indices(norms, log=True)
    assert np.argmax(log_idx) == 0


def _scan(model_setting, **overrides):  # noqa: ANN001, ANN202 - fixture object
    cfg = resolve({"nc-images": 500, **overrides})
    return invert_and_flag(model_setting.model, model_setting.clean, 10, cfg, CPU, torch.Generator().manual_seed(0))[0]


def test_flagged_labels_come_lowest_transfer_first() -> None:
    """The round-20 scan of the continuous benchmark: "Bag" (8) and the true target (0) both pass;
    the target's trigger transfers least to the clean reference, so it comes first; without transfer
    rates the order is by anomaly index."""
    from fl_defense.inversion import DetectionRule

    indices = np.array([2.575, -0.351, -0.157, -0.687, 0.018, -0.018, 0.874, -1.693, 3.163, 0.662])
    transfer = np.array([0.01, 0.106, 0.068, 0.08, 0.117, 0.277, 0.123, 0.16, 0.055, 0.065])
    rule = DetectionRule()
    assert rule.flag(indices, transfer) == [0, 8]
    assert rule.flag(indices, None) == [8, 0]
    transfer[0] = 0.2
    assert rule.flag(indices, transfer) == [8], "a trigger that fools the clean model is not flagged"


def test_scan_flags_the_target_of_a_backdoored_model(bd) -> None:  # noqa: ANN001 - fixture
    result = _scan(bd)
    assert result.flagged[:1] == [bd.target], result.record()
    trigger = result.trigger()
    assert trigger is not None
    assert trigger.mask.shape == (1, 28, 28) and 0 <= trigger.mask.min() and trigger.mask.max() <= 1
    assert bd.asr(bd.model) > 0.9
    stamped_hits = (bd.model(trigger.apply(bd.clean.x[:200])).argmax(1) == bd.target).float().mean()
    assert stamped_hits > 0.9, "the inverted trigger sends clean images to the target"


def test_scan_flags_nothing_on_a_clean_model(clean_model) -> None:  # noqa: ANN001 - fixture
    result = _scan(clean_model)
    assert result.flagged == [], result.record()


@pytest.mark.parametrize("settings", [
    NCSettings(epochs=3, batch_size=128, early_stop=False),
    NCSettings(epochs=40, batch_size=128, patience=1, early_stop_patience=2),  # labels stop at different epochs
], ids=["fixed", "early-stop"])
def test_batched_equals_per_label_arithmetic(bd, settings: NCSettings) -> None:  # noqa: ANN001 - fixture
    """All labels at once is the same optimisation as one label at a time (the loss is a sum), also when
    labels that stopped early leave the batch."""
    images = bd.clean.x[:128]  # one full batch: order-free
    together = invert(bd.model, images, [0, 1, 3], settings, torch.Generator().manual_seed(5), CPU)
    alone = [invert(bd.model, images, [t], settings, torch.Generator().manual_seed(5), CPU)[0] for t in (0, 1, 3)]
    assert [r.label for r in together] == [0, 1, 3]
    for a, b in zip(together, alone, strict=True):
        assert a.epochs == b.epochs and a.reached == b.reached
        assert torch.allclose(a.mask, b.mask, atol=1e-4)
        assert a.norm == pytest.approx(b.norm, rel=1e-4)


def test_defense_pipeline_skips_purification_when_nothing_is_flagged(clean_model) -> None:  # noqa: ANN001
    cfg = resolve({"defense": "mcl", "nc-images": 500})
    outcome = run_defense(clean_model.model, clean_model.clean, 10, cfg, CPU, torch.Generator().manual_seed(0))
    assert outcome.model is clean_model.model
    assert outcome.record["purified"] is False and outcome.record["flagged"] == []


def test_defense_pipeline_inverts_then_purifies_and_remembers_the_trigger(bd, clean_model) -> None:  # noqa: ANN001
    cfg = resolve({"defense": "mcl", "nc-images": 500, "mcl-epochs": 4})
    memory = DefenseMemory()
    outcome = run_defense(bd.model, bd.clean, 10, cfg, CPU, torch.Generator().manual_seed(0), memory)
    assert outcome.record["purified"] is True and outcome.record["flagged"][:1] == [bd.target]
    assert outcome.record["trigger_source"] == "scan" and list(memory.found) == [bd.target]
    assert outcome.record["purified_labels"] == [bd.target]
    assert bd.asr(outcome.model) < 0.1
    assert bd.ba(outcome.model) > bd.ba(bd.model) - 0.05
    # a later call whose scan flags nothing purifies with the remembered trigger
    later = run_defense(clean_model.model, clean_model.clean, 10, cfg, CPU, torch.Generator().manual_seed(1), memory)
    assert later.record["flagged"] == [] and later.record["purified"] is True
    assert later.record["trigger_source"].startswith(f"label {bd.target} of defense call 1: its trigger")
    assert memory.calls == 2 and memory.reference is not None


def _scan_result(norms: list[float], flagged: list[int]) -> ScanResult:
    inversions = [LabelInversion(t, torch.full((1, 4, 4), n / 16), torch.rand(1, 4, 4), n, 0.99, 3, True)
                  for t, n in enumerate(norms)]
    return ScanResult(inversions, anomaly_indices(np.array(norms), log=True), None, flagged, 0.0, "loop")


def test_remembered_trigger_is_mixed_with_its_labels_re_inversion() -> None:
    memory = DefenseMemory(calls=1)
    trigger, source, labels = purification_trigger(_scan_result([5.0, 50, 48, 52, 47, 55], [0]), memory)
    assert (source, labels) == ("scan", [0]) and memory.found == {0: (trigger, 1)}
    remembered = trigger
    memory.calls = 2
    later = _scan_result([80.0, 50, 48, 52, 47, 55], [])
    trigger, source, labels = purification_trigger(later, memory)
    assert source == "label 0 of defense call 1: its trigger and this scan's re-inversion" and labels == [0]
    assert isinstance(trigger, StampMix) and trigger.stamps[0] is remembered
    x = torch.rand(6, 1, 4, 4)
    again = later.trigger_for(0)
    assert again is not None
    expected = torch.cat([remembered.apply(x[0::2]), again.apply(x[1::2])])
    assert torch.equal(trigger.apply(x)[[0, 2, 4, 1, 3, 5]], expected)  # every other image each
    assert memory.found == {0: (remembered, 1)}  # a mix is not remembered
    failed = _scan_result([80.0, 50, 48, 52, 47, 55], [])
    failed.inversions[0] = dataclasses.replace(failed.inversions[0], reached=False)
    assert purification_trigger(failed, memory) == (remembered, "label 0 of defense call 1: its trigger", [0])
    assert purification_trigger(_scan_result([40.0, 50, 48, 52, 47, 55], []), DefenseMemory()) == (None, None, [])


def test_a_later_flag_adds_to_the_memory_and_keeps_the_target() -> None:
    """A natural feature flagged once (Bag, when the fading backdoor was not) must not replace the target."""
    memory = DefenseMemory(calls=1)
    target, _, _ = purification_trigger(_scan_result([5.0, 50, 48, 52, 47, 55], [0]), memory)
    memory.calls = 2
    bag, source, labels = purification_trigger(_scan_result([50.0, 50, 48, 52, 47, 6], [5]), memory)
    assert (source, labels) == ("scan", [5]) and set(memory.found) == {0, 5}
    memory.calls = 3
    failed = _scan_result([80.0, 50, 48, 52, 47, 55], [])
    failed.inversions[0] = dataclasses.replace(failed.inversions[0], reached=False)
    trigger, source, labels = purification_trigger(failed, memory)
    assert labels == [0, 5] and isinstance(trigger, StampMix)
    assert trigger.stamps[0] is target and trigger.stamps[1] is bag and len(trigger.stamps) == 3
    assert source == ("label 0 of defense call 1: its trigger; "
                      "label 5 of defense call 2: its trigger and this scan's re-inversion")


@pytest.mark.parametrize(("defense", "schedule", "rounds", "expected"), [
    ("none", "every:2", 6, []),
    ("mcl", "end", 6, [6]),
    ("mcl", "every:2", 6, [2, 4, 6]),
    ("ft", "every:4", 10, [4, 8]),
])
def test_defense_schedule(defense: str, schedule: str, rounds: int, expected: list[int]) -> None:
    cfg = resolve({"defense": defense, "defense-schedule": schedule, "rounds": rounds})
    assert defense_rounds(cfg) == expected


@pytest.mark.simulation
def test_ray_mode_gives_the_loop_result(bd) -> None:  # noqa: ANN001 - fixture
    """Labels as jobs on the Ray actor pool run the loop's per-label optimisations (Ray started and stopped here)."""
    import ray

    from fl_defense.inversion import DetectionRule, scan

    settings = NCSettings(epochs=2, batch_size=64, early_stop=False)
    kwargs = {"settings": settings, "rule": DetectionRule(), "device": CPU}
    images = bd.clean.x[:128]
    loop = scan(bd.model, images, 10, mode="loop", generator=torch.Generator().manual_seed(3), **kwargs)
    try:
        on_ray = scan(bd.model, images, 10, mode="ray", generator=torch.Generator().manual_seed(3), **kwargs)
        actors = list(_POOL["actors"])
        again = scan(bd.model, images, 10, mode="ray", generator=torch.Generator().manual_seed(3), **kwargs)
        assert _POOL["actors"] == actors, "a later scan reuses the warm pool"
    finally:
        ray.shutdown()
    try:
        restarted = scan(bd.model, images, 10, mode="ray", generator=torch.Generator().manual_seed(3), **kwargs)
    finally:
        ray.shutdown()
    assert restarted.norms == on_ray.norms, "a restarted Ray gets a new pool, not the dead actors of the last one"
    assert on_ray.norms == pytest.approx(loop.norms, rel=1e-5)
    assert again.norms == on_ray.norms
    assert on_ray.flagged == loop.flagged


@pytest.mark.parametrize(("resources", "num_gpus", "expected"), [
    ({"CPU": 2.0}, 0.0, 2),
    ({"CPU": 64.0}, 0.0, 10),
    ({"CPU": 16.0, "GPU": 4.0}, 0.5, 8),
    ({"CPU": 16.0, "GPU": 1.0}, 1.0, 1),
    ({"CPU": 16.0}, 0.25, 1),
])
def test_inversion_pool_size(resources: dict[str, float], num_gpus: float, expected: int) -> None:
    assert pool_size(resources, num_gpus, labels=10) == expected
