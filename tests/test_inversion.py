"""Neural Cleanse: the MAD statistic by hand, the target found on a backdoored CNN, nothing on a clean one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_defense.attacks.trigger import StampMix
from fl_defense.config import resolve
from fl_defense.defense import Defender, TriggerStage, defense_rounds
from fl_defense.inversion import Finding, LabelInversion, NCSettings, ScanResult, TriggerSource, anomaly_indices, invert
from fl_defense.inversion.nc import NeuralCleanseScan
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
    return NeuralCleanseScan(cfg).find(model_setting.model, model_setting.clean, 10, CPU, torch.Generator().manual_seed(0))


def test_flagged_labels_come_lowest_transfer_first() -> None:
    """The round-20 scan of the continuous benchmark: "Bag" (8) and the true target (0) both pass;
    the target's trigger transfers least to the clean reference, so it comes first; without transfer
    rates the order is by anomaly index."""
    from fl_defense.inversion import DetectionRule
    from fl_defense.inversion.reference import LazyRates

    indices = np.array([2.575, -0.351, -0.157, -0.687, 0.018, -0.018, 0.874, -1.693, 3.163, 0.662])
    transfer = np.array([0.01, 0.106, 0.068, 0.08, 0.117, 0.277, 0.123, 0.16, 0.055, 0.065])
    rule = DetectionRule()
    read: list[int] = []
    assert rule.flag(indices, LazyRates(lambda t: read.append(t) or float(transfer[t]), len(transfer))) == [0, 8]
    assert sorted(set(read)) == [0, 8], "only the labels whose index passes need a transfer rate"
    assert rule.flag(indices, None) == [8, 0]
    transfer[0] = 0.2
    assert rule.flag(indices, transfer) == [8], "a trigger that fools the clean model is not flagged"


def test_scan_flags_the_target_of_a_backdoored_model(bd) -> None:  # noqa: ANN001 - fixture
    result = _scan(bd)
    assert result.flagged[:1] == [bd.target], result.record
    trigger = result.triggers.get(bd.target)
    assert trigger is not None
    assert trigger.mask.shape == (1, 28, 28) and 0 <= trigger.mask.min() and trigger.mask.max() <= 1
    assert bd.asr(bd.model) > 0.9
    stamped_hits = (bd.model(trigger.apply(bd.clean.x[:200])).argmax(1) == bd.target).float().mean()
    assert stamped_hits > 0.9, "the inverted trigger sends clean images to the target"


def test_scan_flags_nothing_on_a_clean_model(clean_model) -> None:  # noqa: ANN001 - fixture
    result = _scan(clean_model)
    assert result.flagged == [], result.record


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


def _defender(cfg, setting) -> Defender:  # noqa: ANN001 - fixture object
    return Defender(cfg, setting.clean, 10, CPU, lambda m: (setting.ba(m), setting.asr(m)))


def test_defense_pipeline_skips_purification_when_nothing_is_flagged(clean_model) -> None:  # noqa: ANN001
    cfg = resolve({"defense": "mcl", "inversion": "nc", "nc-images": 500})
    outcome = _defender(cfg, clean_model)(clean_model.model, torch.Generator().manual_seed(0))
    assert outcome.model is clean_model.model
    assert outcome.record["purified"] is False and outcome.record["flagged"] == []
    assert outcome.record["ba_after"] == outcome.record["ba_before"] and "true_target_found" in outcome.record


def test_defense_pipeline_inverts_then_purifies_and_remembers_the_trigger(bd, clean_model) -> None:  # noqa: ANN001
    cfg = resolve({"defense": "mcl", "inversion": "nc", "nc-images": 500, "mcl-epochs": 4, "target-label": bd.target})
    defender = _defender(cfg, bd)
    outcome = defender(bd.model, torch.Generator().manual_seed(0))
    record = outcome.record
    assert record["purified"] is True and record["flagged"][:1] == [bd.target] and record["true_target_found"]
    assert record["trigger_source"] == "scan" and record["purified_labels"] == [bd.target]
    assert defender.stage is not None and list(defender.stage.found) == [bd.target]
    assert record["asr_after"] == bd.asr(outcome.model) < 0.1 < 0.9 < record["asr_before"]
    assert bd.ba(outcome.model) > bd.ba(bd.model) - 0.05
    # a later call whose scan flags nothing purifies with the remembered trigger
    later = defender(clean_model.model, torch.Generator().manual_seed(1))
    assert later.record["flagged"] == [] and later.record["purified"] is True
    assert later.record["trigger_source"].startswith(f"label {bd.target} of defense call 1: its trigger")
    assert defender.stage.calls == 2 and isinstance(defender.stage.source, NeuralCleanseScan)
    assert defender.stage.source.reference.models


class Scripted(TriggerSource):
    """A trigger source that returns the findings it was given, one per call."""

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__({})
        self.findings = list(findings)

    def find(self, model, clean, num_classes, device, generator) -> Finding:  # noqa: ANN001
        return self.findings.pop(0)


def _finding(norms: list[float], flagged: list[int], failed: tuple[int, ...] = ()) -> Finding:
    inversions = [LabelInversion(t, torch.full((1, 4, 4), n / 16), torch.rand(1, 4, 4), n, 0.99, 3, t not in failed)
                  for t, n in enumerate(norms)]
    result = ScanResult(inversions, anomaly_indices(np.array(norms), log=True), None, flagged, 0.0, "loop")
    triggers = {t: trigger for t in range(len(norms)) if (trigger := result.trigger_for(t)) is not None}
    return Finding(flagged, triggers, result.record())


def _stage_calls(*findings: Finding) -> tuple[TriggerStage, list]:  # noqa: ANN001
    stage = TriggerStage(Scripted(list(findings)))
    return stage, [stage(None, None, 6, CPU, torch.Generator())[0] for _ in findings]  # type: ignore[arg-type]


def test_remembered_trigger_is_mixed_with_its_labels_re_inversion() -> None:
    later = _finding([80.0, 50, 48, 52, 47, 55], [])
    stage, (first, mixed, alone) = _stage_calls(_finding([5.0, 50, 48, 52, 47, 55], [0]), later,
                                                _finding([80.0, 50, 48, 52, 47, 55], [], failed=(0,)))
    assert (first.source, first.labels) == ("scan", [0])
    remembered = first.stamp
    assert mixed.source == "label 0 of defense call 1: its trigger and this scan's re-inversion" and mixed.labels == [0]
    assert isinstance(mixed.stamp, StampMix) and mixed.stamp.stamps[0] is remembered
    x = torch.rand(6, 1, 4, 4)
    again = later.triggers[0]
    expected = torch.cat([remembered.apply(x[0::2]), again.apply(x[1::2])])
    assert torch.equal(mixed.stamp.apply(x)[[0, 2, 4, 1, 3, 5]], expected)  # every other image each
    assert stage.found == {0: (remembered, 1)}  # a mix is not remembered
    assert (alone.stamp, alone.source, alone.labels) == (remembered, "label 0 of defense call 1: its trigger", [0])
    assert _stage_calls(_finding([40.0, 50, 48, 52, 47, 55], []))[1] == [None]


def test_a_later_flag_adds_to_the_memory_and_keeps_the_target() -> None:
    """A natural feature flagged once (Bag, when the fading backdoor was not) must not replace the target."""
    stage, (target, bag, mixed) = _stage_calls(_finding([5.0, 50, 48, 52, 47, 55], [0]),
                                               _finding([50.0, 50, 48, 52, 47, 6], [5]),
                                               _finding([80.0, 50, 48, 52, 47, 55], [], failed=(0,)))
    assert set(stage.found) == {0, 5} and bag.labels == [5, 0], "the flag purifies with the remembered target too"
    assert bag.source == "scan; label 0 of defense call 1: its trigger and this scan's re-inversion"
    assert isinstance(bag.stamp, StampMix) and len(bag.stamp.stamps) == 3
    assert bag.stamp.stamps[0] is stage.found[5][0] and bag.stamp.stamps[1] is target.stamp
    assert mixed.labels == [0, 5] and isinstance(mixed.stamp, StampMix)
    assert mixed.stamp.stamps[0] is target.stamp and mixed.stamp.stamps[1] is stage.found[5][0]
    assert len(mixed.stamp.stamps) == 3
    assert mixed.source == ("label 0 of defense call 1: its trigger; "
                            "label 5 of defense call 2: its trigger and this scan's re-inversion")


def test_a_scan_that_flags_several_labels_purifies_with_all_of_them_and_remembers_them() -> None:
    """Seed 1 of the defense table's BadNets run: NC flagged Bag (index 5.37) before the target (5.04); purifying with
    the likeliest label only (Bag's trigger) left ASR 0.094 after MCL and 0.18 after NC unlearning, with both
    labels 0.010 and 0.015."""
    stage, (both,) = _stage_calls(_finding([6.0, 50, 48, 52, 47, 5], [5, 0]))
    assert (both.source, both.labels) == ("scan", [5, 0]) and set(stage.found) == {0, 5}
    assert isinstance(both.stamp, StampMix)
    assert both.stamp.stamps == (stage.found[5][0], stage.found[0][0])
    failed = _stage_calls(_finding([6.0, 50, 48, 52, 47, 5], [5, 0], failed=(5,)))[1][0]
    assert failed.labels == [0] and not isinstance(failed.stamp, StampMix), "a label without a trigger is left out"


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
