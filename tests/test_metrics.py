"""BA and ASR on hand-built models whose predictions are known exactly."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fl_defense.attacks import Trigger
from fl_defense.metrics import attack_success_rate, attack_windows, clean_accuracy, durability, measure, predict

SHAPE = (1, 4, 4)
NUM_CLASSES = 5


class ConstantModel(nn.Module):
    """Predicts `label` for every input."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], NUM_CLASSES, device=x.device)
        logits[:, self.label] = 1.0
        return logits


class LookupModel(nn.Module):
    """Predicts the label stored for each exact image (a memorising oracle keyed by the first pixel).

    It also checks that the model sees each image scaled to [0, 1] exactly as `to_float` would.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.images = images.float() / 255.0
        self.labels = labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32
        idx = torch.round(x[:, 0, 0, 0] * 255).long()
        torch.testing.assert_close(x, self.images[idx], atol=1e-6, rtol=0)
        return nn.functional.one_hot(self.labels[idx], NUM_CLASSES).float()


class TriggerDetector(nn.Module):
    """Predicts `target` when the bottom-right pixel is 1 (the trigger), else class 1."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = x[:, 0, -1, -1] == 1.0
        pred = torch.where(hit, self.target, 1)
        return nn.functional.one_hot(pred, NUM_CLASSES).float()


class AntiTargetModel(nn.Module):
    """Keyed by the first pixel: the target for images whose true label is not the target, else another class.

    Only an ASR that leaves target-class images out scores this model 1.0.
    """

    def __init__(self, labels: torch.Tensor, target: int) -> None:
        super().__init__()
        self.pred = torch.where(labels == target, (target + 1) % NUM_CLASSES, target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.round(x[:, 0, 0, 0] * 255).long()
        return nn.functional.one_hot(self.pred[idx], NUM_CLASSES).float()


def distinct_uint8_images(n: int) -> torch.Tensor:
    """n uint8 images that differ from each other (each has its own first pixel), none saturated at 255."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 200, (n, *SHAPE), dtype=torch.uint8, generator=g)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


def corner_trigger() -> Trigger:
    """An opaque white 1x1 trigger in the bottom-right corner."""
    mask = torch.zeros(1, *SHAPE[1:])
    mask[0, -1, -1] = 1.0
    return Trigger(torch.ones(SHAPE), mask, 1.0)


def test_asr_excludes_target_class_images() -> None:
    """A model that always answers the target: ASR 1.0, even when most test labels are the target."""
    target = 2
    labels = torch.tensor([target] * 90 + [0, 1, 3, 4] * 2 + [0, 1])
    images = distinct_uint8_images(len(labels))
    model = ConstantModel(target)
    assert attack_success_rate(model, images, labels, corner_trigger(), target, batch_size=7) == 1.0
    assert clean_accuracy(model, images, labels) == pytest.approx(0.9)


def test_asr_ignores_how_target_class_images_are_classified() -> None:
    target = 2
    labels = torch.tensor([target] * 90 + [0, 1, 3, 4] * 2 + [0, 1])
    images = distinct_uint8_images(len(labels))
    assert attack_success_rate(AntiTargetModel(labels, target), images, labels, corner_trigger(), target) == 1.0


def test_asr_counts_only_triggered_non_target_hits() -> None:
    target = 0
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    images = distinct_uint8_images(len(labels))
    assert attack_success_rate(TriggerDetector(target), images, labels, corner_trigger(), target) == 1.0
    assert attack_success_rate(ConstantModel(3), images, labels, corner_trigger(), target) == 0.0
    # the detector sees no trigger on clean images, so its clean predictions are all class 1
    assert clean_accuracy(TriggerDetector(target), images, labels) == pytest.approx(1 / 6)


def test_asr_is_nan_when_every_label_is_the_target() -> None:
    labels = torch.full((5,), 3)
    asr = attack_success_rate(ConstantModel(3), distinct_uint8_images(5), labels, corner_trigger(), 3)
    assert math.isnan(asr)
    found = measure(ConstantModel(3), distinct_uint8_images(5), labels, SimpleNamespace(trigger=corner_trigger(),
                    target=3), 2, torch.device("cpu"))
    assert found["ba"] == 1.0 and all(math.isnan(found[k]) for k in ("asr", "clean_to_target", "asr_beyond_clean"))


class ConfusedDetector(nn.Module):
    """Keyed by the first pixel: the target for the images in `confused`, and with `backdoor` for triggered images
    (bottom-right pixel 1) too; the true label otherwise."""

    def __init__(self, labels: torch.Tensor, target: int, confused: list[int], backdoor: bool) -> None:
        super().__init__()
        self.pred, self.target, self.backdoor = labels.clone(), target, backdoor
        self.pred[confused] = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pred = self.pred[torch.round(x[:, 0, 0, 0] * 255).long()]
        if self.backdoor:
            pred = torch.where(x[:, 0, -1, -1] == 1.0, self.target, pred)
        return nn.functional.one_hot(pred, NUM_CLASSES).float()


def test_measure_splits_asr_into_the_models_own_confusion_and_the_triggers_part() -> None:
    """ASR counts the non-target images the model sends to the target even clean; `clean_to_target` is that share and
    `asr_beyond_clean` the rest, so a model that confuses without a backdoor has ASR > 0 and nothing beyond clean."""
    target, labels = 0, torch.tensor([0, 0, 1, 2, 3, 4, 1, 2, 3, 4])  # 8 non-target images
    images = distinct_uint8_images(len(labels))
    attack = SimpleNamespace(trigger=corner_trigger(), target=target)
    backdoored = ConfusedDetector(labels, target, [2, 3], backdoor=True)
    found = measure(backdoored, images, labels, attack, 3, torch.device("cpu"))
    assert found == pytest.approx({"ba": 0.8, "asr": 1.0, "clean_to_target": 0.25, "asr_beyond_clean": 0.75})
    clean = measure(ConfusedDetector(labels, target, [2, 3, 4], backdoor=False), images, labels, attack, 4,
                    torch.device("cpu"))
    assert clean == pytest.approx({"ba": 0.7, "asr": 0.375, "clean_to_target": 0.375, "asr_beyond_clean": 0.0})


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_clean_accuracy_uint8_lookup_model_is_one(batch_size: int) -> None:
    labels = torch.arange(40) % NUM_CLASSES
    images = distinct_uint8_images(40)
    model = LookupModel(images, labels)
    assert clean_accuracy(model, images, labels, batch_size=batch_size) == 1.0
    assert torch.equal(predict(model, images, batch_size, torch.device("cpu")), labels)


def test_clean_accuracy_counts_mistakes() -> None:
    labels = torch.arange(40) % NUM_CLASSES
    images = distinct_uint8_images(40)
    wrong = labels.clone()
    wrong[:10] = (wrong[:10] + 1) % NUM_CLASSES
    assert clean_accuracy(LookupModel(images, wrong), images, labels) == pytest.approx(0.75)


def test_float_inputs_are_used_as_is() -> None:
    """Float images are already in [0, 1] and must not be divided by 255 again."""
    labels = torch.arange(10) % NUM_CLASSES
    images = distinct_uint8_images(10)
    model = LookupModel(images, labels)
    assert clean_accuracy(model, images.float() / 255.0, labels) == 1.0


def test_predict_empty_input() -> None:
    out = predict(ConstantModel(0), torch.empty(0, *SHAPE, dtype=torch.uint8), 10, torch.device("cpu"))
    assert out.shape == (0,) and out.dtype == torch.long


def _rows(asr: list[float], attacked: set[int]) -> list[dict]:
    return [{"round": r, "asr": a, "attackers": [3] if r in attacked else []} for r, a in enumerate(asr, start=1)]


def test_attack_windows() -> None:
    assert attack_windows([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]
    assert attack_windows([]) == []


def test_durability_counts_rounds_until_asr_falls_below_the_threshold() -> None:
    #       round: 1    2    3    4    5    6     7    8    9    10
    asr = [0.5, 0.9, 0.95, 0.9, 0.5, 0.09, 0.95, 0.99, 0.8, 0.6]
    # the schedule has windows 1-3 and 7-8; the attacker was not sampled in round 3
    out = durability(_rows(asr, {1, 2, 7, 8}), [1, 2, 3, 7, 8])
    assert out[0] == {"window": [1, 3], "last_attack": 2, "asr_at_last_attack": 0.9, "rounds_to_fall": 4,
                      "observed": 4}
    assert out[1] == {"window": [7, 8], "last_attack": 8, "asr_at_last_attack": 0.99, "rounds_to_fall": None,
                      "observed": 2}
    assert durability(_rows([0.05, 0.5], {1}), [1])[0]["rounds_to_fall"] == 0  # purified in its own round
    assert durability(_rows(asr, set()), [1, 2, 3]) == []  # no attacker was ever sampled


def test_client_filtering_is_scored_against_the_ground_truth_per_round_and_over_the_run(tmp_path: Path) -> None:
    from fl_defense.metrics import filtering
    from fl_defense.server.reporting import RunReport
    from fl_defense.server.strategy import RoundInfo

    scored = filtering([0, 1, 2, 3, 4], [1, 3], [1, 2, 9])  # 9 was not among the replies
    assert (scored["tp"], scored["fp"], scored["fn"], scored["tn"]) == (1, 1, 1, 2)
    assert scored["precision"] == scored["recall"] == scored["f1"] == 0.5 and scored["fpr"] == pytest.approx(1 / 3)
    quiet = filtering([0, 1, 2], [], [])
    assert quiet["precision"] is None and quiet["recall"] is None and quiet["fpr"] == 0.0

    report = RunReport(tmp_path, {"rounds": 2})
    for r, (excluded, malicious) in enumerate([([2], [2]), ([0, 3], [3])], start=1):
        info = RoundInfo(sampled=[0, 1, 2, 3], malicious=malicious,
                         reports={"aggregation": {"partitions": [0, 1, 2, 3], "excluded": excluded}})
        row = report.log_round(r, {"ba": 0.5, "asr": 0.1}, info, 0.0)
    assert row["aggregation"]["filtering"]["precision"] == 0.5 and row["aggregation"]["filtering"]["recall"] == 1.0
    report.close()
    overall = report.results["filtering"]["aggregation"]
    assert (overall["tp"], overall["fp"], overall["fn"], overall["tn"], overall["rounds"]) == (2, 1, 0, 5, 2)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["fpr"] == pytest.approx(1 / 6)
