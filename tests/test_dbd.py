"""DBD (client-defense=dbd): its loss pieces against hand values, the batched augmentations, the round
schedule, what each stage may change, and the SCE split on real clean and backdoored CNNs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from conftest import Backdoored
from fl_defense.client_defenses import build_client_defense
from fl_defense.client_defenses.augment import color_jitter, random_blur, simclr_augment, weak_augment
from fl_defense.client_defenses.dbd import (
    MEMORY_PREFIX, _projection_head, mixmatch_losses, mixup, nt_xent, phase, sce, semi_supervised_split, sharpen,
)
from fl_defense.config import resolve
from fl_defense.data import dataset_spec, load_dataset
from fl_defense.errors import ConfigError
from fl_defense.models import BackdoorModel, build_model

CPU = torch.device("cpu")
LOG_FLOOR = -math.log(1e-4)


@pytest.fixture
def cfg() -> dict[str, Any]:
    return resolve({"client-defense": "dbd", "device": "cpu"})


@pytest.fixture(scope="module")
def shard() -> tuple[torch.Tensor, torch.Tensor]:
    """96 real Fashion-MNIST training images (uint8) and labels."""
    data = load_dataset("fashion-mnist")
    return data.train_x[:96], data.train_y[:96]


def _model() -> BackdoorModel:
    torch.manual_seed(0)
    return build_model("cnn", dataset_spec("fashion-mnist"))


def _state(model: BackdoorModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_nt_xent_matches_hand_computation() -> None:
    # Two orthogonal images, each view equal to its pair: for every anchor the positive has similarity 1,
    # the two negatives 0, so the loss is -log(e^(1/tau) / (e^(1/tau) + 2)) = log(1 + 2 e^(-1/tau)).
    eye = torch.eye(2)
    assert nt_xent(eye, eye.clone(), 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    # A general case, term by term.
    z1 = F.normalize(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), dim=1)
    z2 = F.normalize(torch.tensor([[2.0, 1.0], [0.0, -1.0]]), dim=1)
    z, tau = torch.cat([z1, z2]).tolist(), 0.3
    expected = 0.0
    for i in range(4):
        sims = {j: sum(a * b for a, b in zip(z[i], z[j], strict=True)) / tau for j in range(4) if j != i}
        expected -= math.log(math.exp(sims[(i + 2) % 4]) / sum(math.exp(s) for s in sims.values()))
    assert nt_xent(z1, z2, tau).item() == pytest.approx(expected / 4, rel=1e-6)


def test_sce_and_rce_match_hand_values() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    labels = torch.tensor([0, 2])
    rce = sce(logits, labels, alpha=0.0, beta=1.0)
    assert rce.tolist() == pytest.approx([LOG_FLOOR * 0.3, LOG_FLOOR * 0.9], rel=1e-5)
    both = sce(logits, labels, alpha=0.1, beta=1.0)
    assert both.tolist() == pytest.approx([0.1 * -math.log(0.7) + LOG_FLOOR * 0.3,
                                           0.1 * -math.log(0.1) + LOG_FLOOR * 0.9], rel=1e-5)


def test_mixmatch_pieces_match_hand_values() -> None:
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    assert torch.allclose(sharpen(p, 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5]]))
    assert torch.equal(sharpen(p, 1.0), p)

    x, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mx, mt = mixup(x, t, 0.75, torch.tensor([1, 0]))
    assert mx.tolist() == [[1.5], [2.5]]
    assert mt.tolist() == [[0.75, 0.25], [0.25, 0.75]]

    logits_x = torch.log(torch.tensor([[0.8, 0.2]]))
    logits_u = torch.log(torch.tensor([[0.5, 0.5]]))
    lx, lu = mixmatch_losses(logits_x, torch.tensor([[0.75, 0.25]]), logits_u, torch.tensor([[1.0, 0.0]]))
    assert lx.item() == pytest.approx(-(0.75 * math.log(0.8) + 0.25 * math.log(0.2)), rel=1e-6)
    assert lu.item() == pytest.approx(0.25, rel=1e-6)


def test_split_takes_the_lowest_losses_of_every_label_up_to_an_equal_quota() -> None:
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2, 0.05, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])  # label 0 holds the four lowest losses but one
    labelled, unlabelled = semi_supervised_split(losses, labels, 0.5, 2)  # quota 2 per label
    assert labelled.tolist() == [1, 4, 5, 7] and unlabelled.tolist() == [0, 2, 3, 6]
    labelled, unlabelled = semi_supervised_split(losses, torch.tensor([0, 0, 0, 0, 0, 0, 0, 2]), 0.5, 3)
    assert labelled.tolist() == [5, 7], "quota round(0.5 * 8 / 3) = 1; a label with fewer samples is labelled whole"
    labelled, unlabelled = semi_supervised_split(torch.tensor([0.5, 0.1]), torch.tensor([0, 1]), 0.9, 2)
    assert labelled.tolist() == [1] and unlabelled.tolist() == [0], "both parts stay non-empty"


@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (16, 3, 32, 32)])
def test_simclr_augment_keeps_shape_and_range_and_differs_per_sample(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape[1:]).expand(*shape).contiguous()
    out = simclr_augment(x, torch.Generator().manual_seed(0), blur=0.5)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    flat = out.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(len(flat)) > 1e-3).all(), "two images got the same view"
    again = simclr_augment(x, torch.Generator().manual_seed(0), blur=0.5)
    assert torch.equal(out, again)


def test_color_jitter_and_blur_keep_range_and_can_be_switched_off() -> None:
    x = torch.rand(8, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(color_jitter(x, g, p=0.0), x, atol=1e-5)
    assert torch.allclose(random_blur(x, g, p=0.0), x, atol=1e-6)
    out = random_blur(color_jitter(x, g, p=1.0), g, p=1.0)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x, atol=1e-2)


def test_weak_augment_is_a_per_sample_integer_shift_and_flip() -> None:
    img = torch.rand(1, 28, 28)
    out = weak_augment(img.expand(32, 1, 28, 28).contiguous(), torch.Generator().manual_seed(0))
    candidates = []
    for flipped in (img, img.flip(-1)):
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                padded = F.pad(flipped, (4, 4, 4, 4))
                candidates.append(padded[:, 4 + dy:32 + dy, 4 + dx:32 + dx])
    stack = torch.stack(candidates)
    for view in out:
        assert ((stack - view).abs().flatten(1).amax(1) < 1e-5).any(), "not a shifted/flipped copy"
    assert len({tuple(v.flatten().tolist()) for v in out.round(decimals=4)}) > 8


def test_phase_schedule_from_config(cfg: dict[str, Any]) -> None:
    phases = [phase(cfg, r) for r in range(1, cfg["rounds"] + 1)]
    assert phases == ["ssl"] * 10 + ["head"] * 2 + ["semi"] * 8
    short = resolve({"client-defense": "dbd", "rounds": 5, "dbd-ssl-rounds": 2, "dbd-head-rounds": 1})
    assert [phase(short, r) for r in range(1, 6)] == ["ssl", "ssl", "head", "semi", "semi"]
    with pytest.raises(ConfigError, match="'dbd-ssl-rounds'"):
        resolve({"client-defense": "dbd", "rounds": 12})
    resolve({"client-defense": "none", "rounds": 12})


def test_ssl_stage_trains_the_backbone_only_and_keeps_the_projection_head(
        cfg: dict[str, Any], shard: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = shard
    dbd = build_client_defense({**cfg, "dbd-ssl-batch-size": 32})
    model = _model()
    before = _state(model)
    memory: dict[str, torch.Tensor] = {}
    loss = dbd.train(model, x, y, torch.arange(len(x)), server_round=1, generator=torch.Generator().manual_seed(0),
                     device=CPU, memory=memory)
    assert math.isfinite(loss)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    assert not torch.equal(before["body.0.weight"], after["body.0.weight"])
    assert memory and all(k.startswith(MEMORY_PREFIX) for k in memory)

    # The next round continues from this client's own projection head.
    first = {k: v.clone() for k, v in memory.items()}
    dbd.train(model, x, y, torch.arange(len(x)), server_round=2, generator=torch.Generator().manual_seed(2),
              device=CPU, memory=memory)
    assert any(not torch.equal(first[k], memory[k]) for k in first)


def test_projection_heads_start_equal_on_every_client() -> None:
    """The first projection head depends on the run's seed only, not on the process's global RNG."""
    heads = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        heads.append(_projection_head(128, seed=0).state_dict())
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not torch.equal(_projection_head(128, seed=1)[0].weight, heads[0]["0.weight"])


def test_head_stage_leaves_the_backbone_bit_identical(
        cfg: dict[str, Any], shard: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = shard
    model = _model()
    before = _state(model)
    build_client_defense(cfg).train(model, x, y, torch.arange(len(x)), server_round=cfg["dbd-ssl-rounds"] + 1,
                                    generator=torch.Generator().manual_seed(0), device=CPU, memory={})
    after = model.state_dict()
    backbone = [k for k in before if not k.startswith("head.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone), "backbone or BatchNorm statistics changed"
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_semi_stage_trains_the_whole_model_reproducibly(
        cfg: dict[str, Any], shard: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = shard
    states, losses = [], []
    for _ in range(2):
        model = _model()
        losses.append(build_client_defense(cfg).train(
            model, x, y, torch.arange(len(x)), server_round=cfg["rounds"], generator=torch.Generator().manual_seed(0),
            device=CPU, memory={}))
        states.append(_state(model))
    start = _model().state_dict()
    assert math.isfinite(losses[0]) and losses[0] == losses[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in start)
    assert not torch.equal(start["body.0.weight"], states[0]["body.0.weight"])
    assert not torch.equal(start["head.weight"], states[0]["head.weight"])


def _poisoned_share_labelled(net: Backdoored, model: BackdoorModel) -> tuple[float, float]:
    """Mix 200 clean test images with 200 triggered non-target ones relabelled to the target, split with
    SCE at epsilon 0.5; the share of the poisoned ones that kept their label, and the share of the target
    label's labelled quota that went to poison."""
    keep = (net.test_y != net.target).nonzero().squeeze(1)[:200]
    images = torch.cat([net.test_x[1000:1200], net.trigger.apply(net.test_x[keep])])
    labels = torch.cat([net.test_y[1000:1200], torch.full((200,), net.target)])
    labelled, _ = semi_supervised_split(sce(model(images), labels, 0.1, 1.0).detach(), labels, 0.5, 10)
    target = labelled[labels[labelled] == net.target]
    return (labelled >= 200).float().sum().item() / 200, (target >= 200).float().mean().item()


def test_sce_split_sends_poison_to_the_unlabelled_part_unless_the_model_learned_the_trigger(
        bd: Backdoored, clean_model: Backdoored) -> None:
    """DBD's premise: with a model that did not learn the trigger (here: trained on clean data, as the
    decoupled model should be) the relabelled poison has a high loss and loses its label. A supervised,
    backdoored model fits the poison best, so the same split would fill the target's quota with it: why DBD
    first trains without labels."""
    # The clean model keeps the few poisoned images it already calls the target: 0.015 here on an AVX-512 CPU
    # with the quota per label (0.05 with the paper's global share; the float path differs between CPUs).
    with torch.no_grad():
        assert _poisoned_share_labelled(clean_model, clean_model.model)[0] < 0.1
        assert _poisoned_share_labelled(bd, bd.model)[1] > 0.9
