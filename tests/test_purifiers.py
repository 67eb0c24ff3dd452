"""Baseline purifiers (FT, NC unlearning, fine-pruning, NAD) on a real backdoored Fashion-MNIST CNN."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import Backdoored
from fl_defense.attacks import Trigger
from fl_defense.config import resolve
from fl_defense.data import dataset_spec
from fl_defense.errors import ConfigError
from fl_defense.metrics import clean_accuracy
from fl_defense.models import BackdoorModel, build_model
from fl_defense.purification import CleanSetPurifier, Purifier, TriggerPurifier, build_purifier
from fl_defense.purification.base import frozen_copy, trainable_copy
from fl_defense.purification.fp import FinePruning
from fl_defense.purification.ft import fine_tune
from fl_defense.purification.nad import attention, attention_loss
from fl_defense.registry import PURIFIERS

CPU = torch.device("cpu")
SPEC = dataset_spec("fashion-mnist")


def purify(bd: Backdoored, name: str, trigger: Trigger | None = None) -> tuple[Purifier, BackdoorModel]:
    """Run a purifier by its config name (default settings) and check it left the input model untouched."""
    purifier = build_purifier(resolve({"defense": name, "device": "cpu"}))
    before = {k: v.clone() for k, v in bd.model.state_dict().items()}
    out = purifier.apply(bd.model, bd.clean, trigger, CPU, torch.Generator().manual_seed(1))
    after = bd.model.state_dict()
    assert out is not bd.model
    assert all(torch.equal(before[k], after[k]) for k in before), f"{name} modified its input model"
    return purifier, out


def test_registry_and_build() -> None:
    assert {"ft", "nc-unlearn", "fp", "nad", "mcl", "cnp"} <= set(PURIFIERS.entries)
    assert issubclass(PURIFIERS["nc-unlearn"], TriggerPurifier) and issubclass(PURIFIERS["ft"], CleanSetPurifier)
    assert build_purifier(resolve({"defense": "mcl"})).trigger_source() == "nc+warp+blend"
    assert build_purifier(resolve({"defense": "ft"})).trigger_source() is None
    for name in ("none", "no-such-defense"):
        with pytest.raises(ConfigError, match="'defense'"):
            build_purifier({"defense": name})


def clean_loss(model: BackdoorModel, bd: Backdoored) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(bd.clean.x), bd.clean.y))


def changed(a: BackdoorModel, b: BackdoorModel) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def test_fine_tuning_trains_on_the_clean_set_and_keeps_accuracy(bd: Backdoored) -> None:
    _, out = purify(bd, "ft")
    assert changed(out, bd.model) and clean_loss(out, bd) < 0.9 * clean_loss(bd.model, bd)
    assert bd.ba(out) >= bd.ba(bd.model) - 0.05


def test_nc_unlearning_with_true_trigger_removes_backdoor(bd: Backdoored) -> None:
    _, out = purify(bd, "nc-unlearn", bd.trigger)
    assert bd.asr(out) < 0.2
    assert bd.ba(out) >= bd.ba(bd.model) - 0.05


def test_the_pipeline_calls_a_trigger_purifier_only_with_a_trigger(bd: Backdoored) -> None:
    with pytest.raises(AssertionError, match="only with a trigger"):
        purify(bd, "nc-unlearn", None)


def test_fine_pruning_prunes_and_pruned_channels_stay_silent(bd: Backdoored) -> None:
    fp, out = purify(bd, "fp")
    assert isinstance(fp, FinePruning)
    channels = fp.pruned_channels
    assert 0 < len(channels) <= int(0.9 * 32)
    assert len(channels) % 2 == 0, "prunes in steps of 5% of 32 channels, rounded to 2"
    assert fp.report() == {"fp_pruned_channels": [int(c) for c in channels]}

    pruned_only = frozen_copy(bd.model, CPU)
    pruned_only.prune_channels(channels)
    ref = clean_accuracy(bd.model, bd.clean.x, bd.clean.y)
    assert clean_accuracy(pruned_only, bd.clean.x, bd.clean.y) >= ref - 0.05

    with torch.no_grad():
        assert torch.all(out.feature_maps(bd.test_x)[-1][:, channels] == 0), "fine-tuning revived pruned channels"
        reloaded = build_model("cnn", SPEC)
        reloaded.load_state_dict(out.state_dict())
        reloaded.eval()
        assert torch.all(reloaded.feature_maps(bd.test_x)[-1][:, channels] == 0)
        assert torch.equal(reloaded(bd.test_x), out(bd.test_x))


def test_nad_distills_the_fine_tuned_teacher_s_attention_and_keeps_accuracy(bd: Backdoored) -> None:
    """NAD's teacher is the model fine-tuned first with the same generator: the student's attention maps end
    nearer the teacher's than the backdoored model's were."""
    _, out = purify(bd, "nad")
    cfg = resolve({"defense": "nad", "device": "cpu"})
    teacher = fine_tune(trainable_copy(bd.model, CPU), bd.clean, cfg, CPU, torch.Generator().manual_seed(1))

    def distance(model: BackdoorModel) -> float:
        with torch.no_grad():
            maps, targets = model.eval().feature_maps(bd.clean.x), teacher.feature_maps(bd.clean.x)
            return sum(float(attention_loss(m, t)) for m, t in zip(maps, targets, strict=True))

    assert changed(out, bd.model) and distance(out) < 0.5 * distance(bd.model)
    assert bd.ba(out) >= bd.ba(bd.model) - 0.05


def test_attention_map_and_loss_by_hand() -> None:
    # One channel with values sqrt(3), 2: a^2 = (3, 4), unit norm -> (0.6, 0.8).
    fm = torch.tensor([3.0, 4.0]).sqrt().view(1, 1, 1, 2)
    assert torch.allclose(attention(fm), torch.tensor([[0.6, 0.8]]))
    # Sample 1: channel means of a^2 are (1, 0) vs (0, 2) -> (1, 0) vs (0, 1): squared distance 2.
    # Sample 2: (1, 1) vs (9, 9) normalise alike: distance 0. MSE over 2 samples x 2 positions = 2 / 4.
    student = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]], [[[1.0, 1.0]], [[1.0, 1.0]]]])
    teacher = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]], [[[3.0, 3.0]], [[3.0, 3.0]]]])
    assert attention_loss(student, teacher).item() == pytest.approx(0.5)
    assert attention_loss(teacher, 7 * teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_small_cnn_feature_maps(bd: Backdoored) -> None:
    x = bd.test_x[:5]
    with torch.no_grad():
        logits, maps = bd.model.logits_and_maps(x)
        assert [m.shape for m in maps] == [(5, 16, 28, 28), (5, 32, 14, 14)]
        assert torch.equal(logits, bd.model(x))
        assert all(torch.equal(a, b) for a, b in zip(maps, bd.model.feature_maps(x), strict=True))


def test_resnet18_feature_maps_and_prune_channels() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", dataset_spec("cifar10")).eval()
    x = torch.rand(2, 3, 32, 32)
    channels = torch.tensor([0, 5, 511])
    with torch.no_grad():
        assert [m.shape for m in model.feature_maps(x)] == [
            (2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
        head = model.head.weight.clone()
        features = model.features(x)
        model.prune_channels(channels)
        keep = torch.ones(512, dtype=torch.bool)
        keep[channels] = False
        assert torch.all(model.head.weight[:, channels] == 0)
        assert torch.equal(model.head.weight[:, keep], head[:, keep])
        expected = F.linear(features * keep, head, model.head.bias)
        assert torch.allclose(model(x), expected, atol=1e-5)
