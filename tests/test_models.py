"""The papers' models on the project's grey 28x28 data: WRN-16-1 (MCL, ABL) and ResNet-18 (DBD, CNP) learn real
Fashion-MNIST images and offer the interface the defenses use (features, stage maps, channel pruning)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fl_defense.data import dataset_spec, load_dataset, to_float
from fl_defense.metrics import clean_accuracy
from fl_defense.models import build_model

SPEC = dataset_spec("fashion-mnist")


@pytest.mark.parametrize(("name", "images"), [("wrn16-1", 1280), ("resnet18", 1280)])
def test_a_paper_model_learns_real_fashion_mnist_in_a_few_steps(name: str, images: int) -> None:
    """20 SGD steps on real images, then the BatchNorm statistics re-estimated on them (after so few steps the
    running averages still lag the weights): well above chance on held-out test images. ResNet-18 on 640 images
    (batches of 32) reached 0.34-0.52 over seeds 0-3 on an AVX-512 CPU (0.426 in this test, one thread), on 1280
    (batches of 64) 0.56-0.67."""
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    x, y = to_float(data.train_x[:images]), data.train_y[:images]
    test_x, test_y = to_float(data.test_x[:500]), data.test_y[:500]
    model = build_model(name, SPEC)
    before = clean_accuracy(model, test_x, test_y, device=torch.device("cpu"))  # leaves it in eval mode
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for idx in torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(images // 20):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the passes below
    with torch.no_grad():
        for idx in torch.arange(len(x)).split(256):
            model(x[idx])
    after = clean_accuracy(model.eval(), test_x, test_y, device=torch.device("cpu"))
    assert after > 0.5 and after > before + 0.3, (before, after)


def test_wrn16_1_stages_features_and_pruning_on_grey_28x28() -> None:
    torch.manual_seed(0)
    model = build_model("wrn16-1", SPEC).eval()
    assert sum(p.numel() for p in model.parameters()) < 180_000, "WRN-16-1 has about 0.17M parameters"
    x = torch.rand(2, 1, 28, 28)
    channels = torch.tensor([0, 9, 63])
    with torch.no_grad():
        maps = model.feature_maps(x)
        assert [m.shape for m in maps] == [(2, 16, 28, 28), (2, 32, 14, 14), (2, 64, 7, 7)]
        assert torch.equal(model.features(x), maps[-1].mean((2, 3)))
        assert model.features(x)[:, channels].abs().sum() > 0
        model.prune_channels(channels)
        features = model.features(x)
    assert torch.all(features[:, channels] == 0), "a pruned channel reaches the head as nothing"
    keep = torch.ones(64, dtype=torch.bool)
    keep[channels] = False
    assert features[:, keep].abs().sum() > 0
    assert torch.all(model.state_dict()["bn.weight"][channels] == 0), "the pruning travels in the state"


@pytest.mark.parametrize("name", ["cnn", "wrn16-1"])
def test_built_models_run_channels_last_with_the_same_predictions_and_state(name: str) -> None:
    """`build_model` stores 4-d weights channels-last (the speed-up of make run); the logits are those of the same
    weights stored NCHW, and a state_dict sent through a Flower ArrayRecord loads into a fresh model unchanged."""
    from flwr.app import ArrayRecord

    from fl_defense.registry import MODELS

    torch.manual_seed(0)
    model = build_model(name, SPEC).eval()
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # a 1-channel first conv is both; the next ones are not
    nchw = MODELS[name].for_dataset(SPEC).eval()
    nchw.load_state_dict(model.state_dict())
    assert all(p.is_contiguous() for p in nchw.parameters())
    x = to_float(load_dataset("fashion-mnist").test_x[:64])
    with torch.no_grad():
        logits = model(x)
        assert torch.allclose(logits, nchw(x), atol=1e-4)
        assert model(x).std() > 0
    received = build_model(name, SPEC).eval()
    received.load_state_dict(ArrayRecord(model.state_dict()).to_torch_state_dict())
    with torch.no_grad():
        assert torch.equal(received(x), logits)


def test_read_only_freezes_the_weights_for_an_input_optimisation_and_restores_each_flag() -> None:
    from fl_defense.models.base import read_only

    model = build_model("cnn", dataset_spec("fashion-mnist")).train()
    model.head.bias.requires_grad_(False)  # a flag of the caller's own survives
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    try:
        with read_only(model, torch.device("cpu")) as frozen:
            assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
            frozen(x).sum().backward()
            assert x.grad is not None and all(p.grad is None for p in frozen.parameters())
            raise RuntimeError("an inversion that fails")
    except RuntimeError:
        pass
    assert [p.requires_grad for p in model.parameters()] == [p is not model.head.bias for p in model.parameters()]
