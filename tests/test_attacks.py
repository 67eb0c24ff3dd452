"""The federated attacks' defining properties on small tensors: DBA's pieces tile the global trigger, PGD
stays in its ball, constrain-and-scale's gradient, Neurotoxin leaves its masked coordinates alone, WaNet's
warp is within its strength, SIG is clean-label."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fl_defense.attacks import build_attack, build_attacker_training, malicious_clients, malicious_rank, poison_data
from fl_defense.attacks.constrain_and_scale import add_anomaly_gradient
from fl_defense.attacks.dba import pieces_of
from fl_defense.attacks.neurotoxin import PREFIX, clean_gradient, top_k_mask
from fl_defense.attacks.pgd import project_l2
from fl_defense.attacks.sig import SignalTrigger, sine_signal
from fl_defense.attacks.wanet import WarpTrigger, flow_field, identity_grid, warp_grid
from fl_defense.clients.behaviour import local_update
from fl_defense.config import resolve
from fl_defense.data import cached_dataset, dataset_spec, to_float
from fl_defense.errors import ConfigError
from fl_defense.models import build_model
import fl_defense.clients.behaviour as behaviour

GRAY = dataset_spec("fashion-mnist").shape


def make(overrides: dict[str, Any], shape: tuple[int, int, int] = GRAY) -> Any:
    attack = build_attack(resolve(overrides), shape, 10)
    assert attack is not None
    return attack


# DBA

@pytest.mark.parametrize(("pieces", "location"), [(4, "bottom-right"), (3, "top-left"), (6, "center"), (1, "2,3")])
def test_dba_pieces_tile_the_global_trigger(pieces: int, location: str) -> None:
    attack = make({"attack": "dba", "dba-pieces": pieces, "trigger-location": location})
    masks = torch.stack([t.mask for t in attack.piece_triggers])
    assert masks.shape == (pieces, 1, 28, 28)
    assert (masks.sum(0) <= 1).all()  # disjoint
    assert torch.equal(masks.sum(0), attack.trigger.mask)  # their union is the global trigger
    assert (masks.sum((1, 2, 3)) == 4).all()  # 1 x 4 bars, the paper's MNIST pieces
    assert set(attack.extra_triggers()) == {f"piece-{p}" for p in range(pieces)}


def test_dba_layout_is_the_papers() -> None:
    mask = make({"attack": "dba", "trigger-location": "top-left"}).trigger.mask[0]
    expected = torch.zeros(28, 28)
    for r in (0, 3):  # two rows of bars, 1 pixel high, gap 2
        expected[r, 0:4] = expected[r, 6:10] = 1
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(("malicious", "pieces"), [(2, 4), (3, 4), (4, 4), (6, 4), (1, 3)])
def test_dba_every_piece_is_planted_and_clients_plant_their_own(malicious: int, pieces: int) -> None:
    assignment = [pieces_of(r, malicious, pieces) for r in range(malicious)]
    assert set().union(*map(set, assignment)) == set(range(pieces))
    if malicious <= pieces:  # a partition of the pieces
        assert sum(len(a) for a in assignment) == pieces
    attack = make({"attack": "dba", "dba-pieces": pieces})
    for rank, own in enumerate(assignment):
        local = attack.for_client(rank, malicious)
        union = torch.stack([attack.piece_triggers[p].mask for p in own]).amax(0)
        assert torch.equal(local.trigger.mask, union)
        assert local.target == attack.target
    assert attack.trigger.mask.sum() == 4 * pieces  # for_client left the global trigger alone


def test_dba_that_does_not_fit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dba-pieces"):
        make({"attack": "dba", "dba-pieces": 12, "dba-piece-width": 6})


def test_malicious_rank() -> None:
    evil = frozenset({7, 2, 5})
    assert [malicious_rank(p, evil) for p in (2, 5, 7)] == [0, 1, 2]


# PGD

def test_project_l2_onto_the_ball() -> None:
    anchor = {"a": torch.zeros(3), "b": torch.ones(2)}
    params = {"a": torch.tensor([3.0, 0.0, 0.0]), "b": torch.tensor([1.0, 5.0])}  # distance 5
    before = project_l2(params, anchor, 2.5)
    assert before == pytest.approx(5.0)
    assert torch.allclose(params["a"], torch.tensor([1.5, 0.0, 0.0]))
    assert torch.allclose(params["b"], torch.tensor([1.0, 3.0]))
    inside = {"a": torch.tensor([0.1, 0.0, 0.0]), "b": torch.ones(2)}
    project_l2(inside, anchor, 2.5)
    assert torch.equal(inside["a"], torch.tensor([0.1, 0.0, 0.0]))


def _shard(n: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = cached_dataset("fashion-mnist", "", True)
    return data.train_x[:n], data.train_y[:n], torch.arange(n)


def _update_norm(model: torch.nn.Module, g: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((p.detach() - g[n]) ** 2).sum() for n, p in model.named_parameters())))


def _attacker_round(cfg: dict[str, Any], memory: dict[str, torch.Tensor] | None = None
                    ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], float]:
    torch.manual_seed(0)
    model = build_model("cnn", dataset_spec("fashion-mnist"))
    g = {k: v.clone() for k, v in model.state_dict().items()}
    x, y, idx = _shard()
    loss = build_attacker_training(cfg).train(model, x, y, idx, make(cfg), g, generator=torch.Generator().manual_seed(1),
                                              device=torch.device("cpu"), memory={} if memory is None else memory)
    return model, g, loss


def test_pgd_update_lies_within_the_bound() -> None:
    plain, g, _ = _attacker_round(resolve({"lr": 0.05}))
    assert _update_norm(plain, g) > 1.0  # unconstrained, the update leaves the ball
    bounded, g, loss = _attacker_round(resolve({"lr": 0.05, "attack-training": "pgd", "pgd-eps": 0.5}))
    assert _update_norm(bounded, g) <= 0.5 + 1e-5
    assert math.isfinite(loss) and loss > 0


def test_malicious_epochs_set_the_attackers_local_training() -> None:
    """An attacker trains `malicious-epochs` epochs (the literature's longer attacker training), benign clients
    `local-epochs`: two attacker epochs equal two local epochs and differ from one."""
    longer, _, _ = _attacker_round(resolve({"malicious-epochs": 2}))
    same, _, _ = _attacker_round(resolve({"local-epochs": 2}))
    one, _, _ = _attacker_round(resolve({}))
    assert all(torch.equal(a, b) for a, b in zip(longer.state_dict().values(), same.state_dict().values(), strict=True))
    assert not torch.equal(longer.head.weight, one.head.weight)


# constrain-and-scale

def test_anomaly_gradient_matches_autograd() -> None:
    torch.manual_seed(0)
    w = {"a": torch.randn(4, requires_grad=True), "b": torch.randn(2, 3, requires_grad=True)}
    anchor = {"a": torch.randn(4), "b": torch.randn(2, 3)}
    alpha = 0.3
    class_loss = (w["a"] ** 3).sum() + w["b"].sin().sum()
    dist = torch.sqrt(sum(((w[n] - anchor[n]) ** 2).sum() for n in w))
    expected = torch.autograd.grad(alpha * class_loss + (1 - alpha) * dist, list(w.values()), retain_graph=True)
    grads = torch.autograd.grad(class_loss, list(w.values()))
    for (n, p), gr in zip(w.items(), grads):
        p.grad = gr.clone()
    add_anomaly_gradient(w, anchor, alpha)
    for p, e in zip(w.values(), expected):
        assert torch.allclose(p.grad, e, atol=1e-6)


def test_constrain_and_scale_keeps_the_model_closer() -> None:
    plain, g, _ = _attacker_round(resolve({"lr": 0.05}))
    constrained, g, _ = _attacker_round(resolve({"lr": 0.05, "attack-training": "constrain-and-scale",
                                                 "cs-alpha": 0.3}))
    assert _update_norm(constrained, g) < 0.8 * _update_norm(plain, g)


def test_constrain_and_scale_scales_by_gamma(small_cfg: dict[str, Any]) -> None:
    """The client's update is the trained one times gamma: by default clients per round over the
    attackers expected among them (10 / 2 here), or `cs-gamma`, times `boost`."""

    cfg = {**small_cfg, "num-clients": 10, "clients-per-round": 10, "malicious-fraction": 0.2,
           "attack-training": "constrain-and-scale"}
    assert build_attacker_training(resolve(cfg)).scale() == 5.0
    assert build_attacker_training(resolve({**cfg, "cs-gamma": 3.0, "boost": 2.0})).scale() == 6.0
    evil = next(iter(malicious_clients(10, 0.2, cfg["seed"])))
    torch.manual_seed(0)
    g = build_model("cnn", dataset_spec("fashion-mnist")).state_dict()
    trainable = [n for n, _ in build_model("cnn", dataset_spec("fashion-mnist")).named_parameters()]
    unscaled = local_update(resolve({**cfg, "cs-gamma": 1.0}), evil, 1, g, {}).state
    scaled = local_update(resolve(cfg), evil, 1, g, {}).state
    for n in trainable:
        assert torch.allclose(scaled[n] - g[n], 5.0 * (unscaled[n] - g[n]), atol=1e-5)


# Neurotoxin

def test_top_k_mask_masks_exactly_the_largest() -> None:
    proxy = {"a": torch.tensor([0.1, -5.0, 0.2]), "b": torch.tensor([[3.0, 0.0], [-0.3, 4.0]])}
    mask = top_k_mask(proxy, 3 / 7)
    assert torch.equal(mask["a"], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(mask["b"], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert sum(int((m == 0).sum()) for m in top_k_mask(proxy, 1e-6).values()) == 1  # at least one


def test_neurotoxin_leaves_the_masked_coordinates_untouched() -> None:
    cfg = resolve({"lr": 0.05, "attack-training": "neurotoxin", "neurotoxin-top-k": 0.1})
    torch.manual_seed(0)
    model = build_model("cnn", dataset_spec("fashion-mnist"))
    g = {k: v.clone() for k, v in model.state_dict().items()}
    previous = {PREFIX + n: g[n] - torch.randn_like(g[n]) * 0.01 for n, _ in model.named_parameters()}
    memory = dict(previous)
    x, y, idx = _shard()
    method = build_attacker_training(cfg)
    method.train(model, x, y, idx, make(cfg), g, generator=torch.Generator().manual_seed(1),
                 device=torch.device("cpu"), memory=memory)
    proxy = {n: g[n] - previous[PREFIX + n] for n, _ in model.named_parameters()}
    mask = top_k_mask(proxy, 0.1)
    masked = changed = 0
    for n, p in model.named_parameters():
        frozen = mask[n] == 0
        assert torch.equal(p.detach()[frozen], g[n][frozen])
        masked += int(frozen.sum())
        changed += int((p.detach()[~frozen] != g[n][~frozen]).sum())
    assert masked > 0 and changed > 0.5 * (sum(m.numel() for m in mask.values()) - masked)
    method.observe(model, g, memory)
    assert all(torch.equal(memory[PREFIX + n], g[n]) for n, _ in model.named_parameters())


def test_neurotoxin_first_round_uses_its_clean_gradient() -> None:
    """With no memory, the coordinates left untouched are exactly the top 5% of the clean-batch gradient, and the
    attacker trains all the others."""
    cfg = resolve({"lr": 0.05, "attack-training": "neurotoxin", "neurotoxin-top-k": 0.05})
    torch.manual_seed(0)
    fresh = build_model("cnn", dataset_spec("fashion-mnist"))
    x, y, idx = _shard()
    mask = top_k_mask(clean_gradient(fresh, x, y, idx, cfg["batch-size"], torch.device("cpu")), 0.05)
    model, g, _ = _attacker_round(cfg)
    frozen = changed = others = 0
    for n, p in model.named_parameters():
        keep = mask[n] == 0
        assert torch.equal(p.detach()[keep], g[n][keep])
        frozen += int(keep.sum())
        changed += int((p.detach()[~keep] != g[n][~keep]).sum())
        others += int((~keep).sum())
    assert frozen == round(0.05 * sum(p.numel() for p in model.parameters()))
    assert changed > 0.9 * others


# WaNet

def test_wanet_warp_is_within_its_strength() -> None:
    h = w = 28
    for strength in (0.5, 2.0):
        grid = warp_grid(h, w, 4, strength, torch.Generator().manual_seed(3))
        flow = flow_field(h, w, 4, torch.Generator().manual_seed(3))
        shift = (grid - identity_grid(h, w)).abs()
        assert shift.max() <= strength * flow.abs().max() / h + 1e-6
        assert shift.max() > 0.5 * strength * flow.abs().max() / h
        assert grid.abs().max() <= 1
    control = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.allclose(flow_field(4, 4, 4, torch.Generator().manual_seed(3)),
                          (control / control.abs().mean()).permute(0, 2, 3, 1), atol=1e-5)


def test_wanet_is_an_imperceptible_warp_that_vanishes_at_strength_zero() -> None:
    x = to_float(cached_dataset("fashion-mnist", "", True).test_x[:64])
    still = WarpTrigger(warp_grid(28, 28, 4, 1e-9, torch.Generator().manual_seed(0)))
    assert torch.allclose(still.apply(x), x, atol=1e-5)
    warped = make({"attack": "wanet", "wanet-strength": 0.5}).trigger.apply(x)  # the paper's strength
    assert warped.min() >= 0 and warped.max() <= 1
    assert 0 < (warped - x).abs().mean() < 0.05


def test_wanet_poisons_and_adds_noise_mode_images() -> None:
    attack = make({"attack": "wanet", "poison-rate": 0.25, "target-label": 1, "wanet-cross-ratio": 2.0})
    x = to_float(cached_dataset("fashion-mnist", "", True).test_x[:32])
    y = torch.full((32,), 5)
    px, py = attack.poison_batch(x, y, torch.Generator().manual_seed(0))
    assert int((py == 1).sum()) == 8
    changed = (px - x).flatten(1).abs().amax(1) > 0
    assert int(changed.sum()) == 24  # 8 poisoned + 16 noise-mode (cross ratio 2)
    assert (py[changed & (py != 1)] == 5).all()
    assert torch.allclose(px[py == 1], attack.trigger.apply(x[py == 1]))
    default = make({"attack": "wanet", "poison-rate": 0.25, "target-label": 1})  # no noise mode
    px, py = default.poison_batch(x, y, torch.Generator().manual_seed(0))
    assert int(((px - x).flatten(1).abs().amax(1) > 0).sum()) == int((py == 1).sum()) == 8


# SIG

def test_sig_signal_and_clean_label_poisoning() -> None:
    attack = make({"attack": "sig", "target-label": 2, "poison-rate": 1.0, "sig-delta": 40 / 255})
    signal = sine_signal(GRAY, 40 / 255, 6)
    j = torch.arange(28, dtype=torch.float32)
    assert torch.allclose(signal[0, 5], 40 / 255 * torch.sin(2 * torch.pi * j * 6 / 28))
    x = torch.full((6, 1, 28, 28), 0.5)
    y = torch.tensor([2, 0, 2, 1, 3, 2])
    px, py = attack.poison_batch(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(py, y)  # clean-label: no label changes
    assert torch.allclose(px[y == 2], (x[y == 2] + signal).clamp(0, 1))
    assert torch.equal(px[y != 2], x[y != 2])
    none = attack.poison_batch(x, torch.zeros(6, dtype=torch.long) + 4, torch.Generator())[0]
    assert torch.equal(none, x)


def test_sig_poisoned_data_stamps_target_images_only() -> None:
    attack = make({"attack": "sig", "target-label": 2, "poison-rate": 0.5})
    data = cached_dataset("fashion-mnist", "", True)
    x, y = data.train_x[:600], data.train_y[:600]
    out = poison_data(x, y, attack, torch.Generator().manual_seed(0))
    assert torch.equal(out.labels, y)
    assert (y[out.poisoned] == 2).all() and len(out.poisoned) == round(0.5 * int((y == 2).sum()))


# config and clients

@pytest.mark.parametrize(("overrides", "key"), [
    ({"attack": "dba", "trigger-mask": "m.npy"}, "trigger-mask"),
    ({"threat": "poisoned-data", "attack-training": "pgd"}, "attack-training"),
    ({"attack-training": "krum"}, "attack-training"),
    ({"pgd-eps": 0}, "pgd-eps"),
    ({"neurotoxin-top-k": 1.0}, "neurotoxin-top-k"),
    ({"attack": "trojan"}, "attack"),
])
def test_attack_config_errors(overrides: dict[str, Any], key: str, tmp_path: Any) -> None:
    if "trigger-mask" in overrides:
        (tmp_path / "m.npy").write_bytes(b"")
        overrides = {**overrides, "trigger-mask": str(tmp_path / "m.npy")}
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve(overrides)


def test_dba_clients_plant_their_own_pieces(small_cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {**small_cfg, "attack": "dba", "malicious-fraction": 0.5}
    evil = sorted(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"]))
    assert len(evil) == 2
    torch.manual_seed(0)
    g = build_model(cfg["model"], dataset_spec(cfg["dataset"])).state_dict()
    seen = []
    original = behaviour.build_attacker_training

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def train(self, model: Any, images: Any, labels: Any, indices: Any, attack: Any, *args: Any, **kw: Any) -> float:
            seen.append(attack.trigger.mask.clone())
            return self.inner.train(model, images, labels, indices, attack, *args, **kw)

        def observe(self, *args: Any) -> None:
            self.inner.observe(*args)

        def scale(self) -> float:
            return self.inner.scale()

    monkeypatch.setattr(behaviour, "build_attacker_training", lambda c: Spy(original(c)))
    for pid in evil:
        assert local_update(cfg, pid, 1, g, {}).attacked
    full = make(cfg).trigger.mask
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[0] + seen[1], full)


def test_neurotoxin_client_remembers_the_global_model(small_cfg: dict[str, Any]) -> None:
    cfg = {**small_cfg, "attack-training": "neurotoxin"}
    evil = next(iter(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])))
    torch.manual_seed(0)
    g = build_model(cfg["model"], dataset_spec(cfg["dataset"])).state_dict()
    memory: dict[str, torch.Tensor] = {}
    local_update({**cfg, "attack-schedule": "window:2-3"}, evil, 1, g, memory)  # not attacking: still observes
    assert memory and all(torch.equal(memory[k], g[k.removeprefix(PREFIX)]) for k in memory)


@settings(deadline=None, max_examples=40)
@given(x=hnp.arrays(np.float32, (2, 3, 8, 8), elements=st.floats(0, 1, width=32)),
       k=st.integers(2, 6), strength=st.floats(0.01, 8.0), delta=st.floats(0.001, 1.0), freq=st.floats(0.1, 12.0),
       seed=st.integers(0, 2**31 - 1))
def test_warp_and_signal_triggers_stay_in_unit_range(x: np.ndarray, k: int, strength: float, delta: float,
                                                     freq: float, seed: int) -> None:
    images = torch.from_numpy(x)
    warped = WarpTrigger(warp_grid(8, 8, k, strength, torch.Generator().manual_seed(seed))).apply(images)
    assert warped.shape == images.shape and warped.min() >= 0 and warped.max() <= 1
    signal = SignalTrigger(sine_signal((3, 8, 8), delta, freq)).apply(images)
    assert signal.min() >= 0 and signal.max() <= 1
    assert (signal - images).abs().max() <= delta + 1e-6
