"""Robust aggregation: each rule's arithmetic against hand-computed values, attacker exclusion, and every
builder's Flower strategy on fake replies of the real CNN's state (BatchNorm buffers, int64 counters)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity

from fl_defense.aggregation import foolsgold, foolsgold_weights, normclip, rlr
from fl_defense.aggregation.base import flat_updates
from fl_defense.aggregation.flame import flame
from fl_defense.config import resolve
from fl_defense.data import dataset_spec
from fl_defense.errors import ConfigError
from fl_defense.models import build_model
from fl_defense.registry import AGGREGATION_RULES
from fl_defense.server.aggregation import build_aggregator
from fl_defense.server.strategy import DefenseStrategy, chain_state, load_chain_state

NO_NOISE = torch.Generator().manual_seed(0)


def _state(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


# --- the rules' arithmetic on tiny tensors ---------------------------------------------------------------------

@pytest.mark.parametrize("confidence", [1.0, 0.5])
def test_foolsgold_weights_match_the_hand_computation(confidence: float) -> None:
    deg = math.pi / 180
    angles = [0 * deg, 50 * deg, 110 * deg]
    histories = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    # cosines: c12 = cos 50, c13 = cos 110 (< 0), c23 = cos 60; max similarity v = (c12, c12, c23).
    c12, c13, c23 = math.cos(50 * deg), math.cos(110 * deg), math.cos(60 * deg)
    # Only client 3 is pardoned (v3 < v1 = v2): its similarities are scaled by v3 / v1.
    alpha1 = 1 - c12
    alpha3 = 1 - max(c13 * c23 / c12, c23 * c23 / c12)
    r = alpha1 / alpha3  # alpha divided by its max (client 3's); client 3 gets 1 -> logit +inf -> 1
    w12 = min(1.0, max(0.0, confidence * (math.log(r / (1 - r)) + 0.5)))
    weights = foolsgold_weights(histories, confidence)
    assert 0 < w12 < 1
    assert torch.allclose(weights, torch.tensor([w12, w12, 1.0], dtype=torch.float64), atol=1e-9)


def test_foolsgold_aggregate_is_the_weighted_mean_and_keeps_history() -> None:
    history: dict[int, torch.Tensor] = {}
    g = _state(0.0, 0.0)
    # Clients 0 and 1 identical (weight 0), client 2 orthogonal (weight 1): the update is client 2's.
    out = foolsgold(g, [_state(1, 0), _state(1, 0), _state(0, 2)], [0, 1, 2], history, 1.0)
    assert torch.allclose(out.state["w"], torch.tensor([0.0, 2.0]))
    assert out.info["weights"] == [0.0, 0.0, 1.0] and out.info["excluded"] == [0, 1]
    assert torch.equal(history[2], torch.tensor([0.0, 2.0]))
    foolsgold(g, [_state(0, 1)], [2], history, 1.0)
    assert torch.equal(history[2], torch.tensor([0.0, 3.0]))


def test_rlr_flips_the_coordinates_with_too_little_sign_agreement() -> None:
    g = _state(0.5, 0.5, 0.5, 0.5)
    updates = [(1, 1, -1, 2), (1, -1, -1, 2), (1, 1, 3, -1)]  # sign sums 3, 1, -1, 1
    states = [_state(*(0.5 + u for u in upd)) for upd in updates]
    # weighted mean (weights 1, 1, 2): (1, 0.5, 1, 0.5)
    out = rlr(g, states, [1.0, 1.0, 2.0], threshold=2)
    assert torch.allclose(out.state["w"], torch.tensor([1.5, 0.0, -0.5, 0.0]))
    assert out.info["flipped_fraction"] == 0.75
    kept = rlr(g, states, [1.0, 1.0, 2.0], threshold=1)
    assert torch.allclose(kept.state["w"], torch.tensor([1.5, 1.0, 1.5, 1.0]))


def test_normclip_clips_to_the_bound_or_the_median_norm() -> None:
    g = _state(1.0, 1.0)
    states = [_state(1 + 3, 1 + 4), _state(1, 1 + 1), _state(1 + 6, 1 + 8)]  # update norms 5, 1, 10
    fixed = normclip(g, states, bound=2.0, noise_std=0.0, generator=NO_NOISE)
    # factors 0.4, 1, 0.2 -> (1.2, 1.6), (0, 1), (1.2, 1.6)
    assert torch.allclose(fixed.state["w"], torch.tensor([1 + 0.8, 1 + 1.4]))
    assert fixed.info["clipped"] == [0, 2]
    adaptive = normclip(g, states, bound=0.0, noise_std=0.0, generator=NO_NOISE)
    # median norm 5: factors 1, 1, 0.5 -> (3, 4), (0, 1), (3, 4)
    assert adaptive.info["clip_bound"] == 5.0 and adaptive.info["clipped"] == [2]
    assert torch.allclose(adaptive.state["w"], torch.tensor([1 + 2.0, 1 + 3.0]))


def test_normclip_adds_noise_of_the_given_std() -> None:
    g = {"w": torch.zeros(20_000)}
    out = normclip(g, [g, g], bound=1.0, noise_std=0.1, generator=torch.Generator().manual_seed(1))
    assert abs(float(out.state["w"].std()) - 0.1) < 0.005


def test_flame_clips_to_the_median_norm_and_scales_noise_with_it() -> None:
    g = _state(0.0, 0.0, 0.0)
    directions = [(1, 0, 0), (0.8, 0.6, 0), (0.6, 0.8, 0), (0.8, 0, 0.6)]
    norms = [1.0, 2.0, 4.0, 10.0]  # median 3 (mean of the middle two)
    states = [_state(*(s * x for x in d)) for s, d in zip(norms, directions)]
    out = flame(g, states, noise_level=0.0, generator=NO_NOISE)
    assert out.info["clip_bound"] == pytest.approx(3.0)
    assert out.info["clipped"] == [i for i in (2, 3) if i not in out.info["excluded"]]
    admitted = [i for i in range(4) if i not in out.info["excluded"]]
    assert len(admitted) >= 3  # the majority cluster: at least n/2 + 1
    clipped = [min(s, 3.0) * torch.tensor(d) for s, d in zip(norms, directions)]
    expected = torch.stack([clipped[i] for i in admitted]).mean(dim=0)
    assert torch.allclose(out.state["w"], expected, atol=1e-6)
    noisy = flame(g, states, noise_level=0.01, generator=NO_NOISE)
    assert noisy.info["noise_std"] == pytest.approx(0.03)


# --- fake Flower replies of the real model ---------------------------------------------------------------------

class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when its strategy builds messages."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _reply(partition: int, state: dict[str, torch.Tensor], examples: int) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord(state),
        "metrics": MetricRecord({"num-examples": examples, "train-loss": 0.5}),
        "client": ConfigRecord({"partition-id": partition}),
    })
    node = 9000 + partition
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, content=content)


def _cfg(aggregation: str, **extra: object) -> dict[str, object]:
    return resolve({"aggregation": aggregation, "num-clients": 10, "clients-per-round": 10, **extra})


class Round:
    """A global CNN state and client states: params moved by given flat updates, buffers varied per client."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        model = build_model("auto", dataset_spec("fashion-mnist"))
        self.global_state = dict(model.state_dict())
        self.trainable = {name for name, _ in model.named_parameters()}
        self.params = {k: v for k, v in self.global_state.items() if k in self.trainable}
        self.dim = sum(v.numel() for v in self.params.values())
        self.states: list[dict[str, torch.Tensor]] = []

    def client(self, update: torch.Tensor, partition: int) -> dict[str, torch.Tensor]:
        moved = {k: v.clone() for k, v in self.global_state.items()}
        offset = 0
        for k, v in self.params.items():
            moved[k] = v + update[offset:offset + v.numel()].reshape(v.shape)
            offset += v.numel()
        for k in moved:
            if k.endswith("running_mean"):
                moved[k] = moved[k] + 0.1 * partition
            elif k.endswith("running_var"):
                moved[k] = torch.full_like(moved[k], 0.5 + 0.1 * partition)
            elif k.endswith("num_batches_tracked"):
                moved[k] = torch.tensor(100 + 7 * partition, dtype=torch.int64)
        return moved

    def aggregate(self, strategy: Strategy, updates: torch.Tensor, examples: list[int],
                  server_round: int = 1) -> dict[str, torch.Tensor]:
        """configure_train with the global state, then aggregate one reply per update (partition = row)."""
        nodes = [9000 + p for p in range(len(updates))]
        grid = FakeGrid(nodes)
        strategy.configure_train(server_round, ArrayRecord(self.global_state), ConfigRecord(), grid)  # type: ignore
        self.states = [self.client(u, p) for p, u in enumerate(updates)]
        replies = [_reply(p, s, examples[p]) for p, s in enumerate(self.states)]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        assert arrays is not None
        return dict(arrays.to_torch_state_dict())


def _attacked_updates(dim: int, n: int, malicious: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Benign: a shared direction plus gaussian noise; malicious: one other direction, boosted 5x, near-identical."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=g)
    backdoor = torch.randn(dim, generator=g)
    scale = 0.05 / math.sqrt(dim)
    rows = [scale * (common + 0.8 * torch.randn(dim, generator=g)) for _ in range(n)]
    for i in malicious:
        rows[i] = 5 * scale * (backdoor + 0.1 * torch.randn(dim, generator=g))
    return torch.stack(rows)


MALICIOUS = (3, 7)


@pytest.mark.parametrize("aggregation", ["flame", "krum", "multikrum"])
def test_boosted_backdoor_updates_are_excluded(aggregation: str) -> None:
    cfg = _cfg(aggregation)
    strategy = build_aggregator(cfg)
    r = Round()
    updates = _attacked_updates(r.dim, 10, MALICIOUS)
    out = r.aggregate(strategy, updates, [50] * 10)
    excluded = strategy.last_info["excluded"]
    assert set(MALICIOUS) <= set(excluded)
    if aggregation == "multikrum":
        assert sorted(excluded) == list(MALICIOUS)  # it keeps n - f = 8: exactly the benign
    if aggregation == "flame":
        assert len(excluded) <= 4  # a majority (n/2 + 1) is admitted
    if aggregation == "krum":
        chosen = [p for p in range(10) if all(torch.equal(out[k], r.states[p][k]) for k in r.params)]
        assert len(chosen) == 1 and chosen[0] not in MALICIOUS


def test_bulyan_reports_the_boosted_updates_its_krum_selection_left_out() -> None:
    """Bulyan (11 clients, f = 2) keeps n - 2f = 7 by Krum before its trimmed mean: the two boosted updates are
    among the four it leaves out, and what it reports is what its aggregate was made of."""
    strategy = build_aggregator(_cfg("bulyan", **{"num-clients": 11, "clients-per-round": 11}))
    r = Round()
    r.aggregate(strategy, _attacked_updates(r.dim, 11, MALICIOUS), [50] * 11)
    excluded = strategy.last_info["excluded"]
    assert set(MALICIOUS) <= set(excluded) and len(excluded) == 4


def test_foolsgold_downweights_sybils_over_rounds() -> None:
    g = torch.Generator().manual_seed(3)
    dim, history = 500, {}
    global_state = {"w": torch.zeros(dim)}
    sybil_direction = torch.randn(dim, generator=g)
    for _ in range(3):
        benign = [torch.randn(dim, generator=g) + 0.3 * torch.ones(dim) for _ in range(7)]
        sybils = [sybil_direction + 0.01 * torch.randn(dim, generator=g) for _ in range(3)]
        out = foolsgold(global_state, [{"w": u} for u in benign + sybils], list(range(10)), history, 1.0)
    weights = out.info["weights"]
    assert max(weights[7:]) < 0.01
    assert min(weights[:7]) > 0.5
    assert set(out.info["excluded"]) >= {7, 8, 9}


# --- every builder through Flower's message path ----------------------------------------------------------------

EXTRA = {"bulyan": {"num-clients": 11, "clients-per-round": 11}, "dp-clip": {"clip-norm": 0.5}}


@pytest.mark.parametrize("aggregation", sorted(AGGREGATION_RULES.entries) + ["dp-clip-adaptive"])
def test_every_builder_aggregates_fake_replies_and_averages_buffers(aggregation: str) -> None:
    name = aggregation.removesuffix("-adaptive")
    extra = {} if aggregation.endswith("-adaptive") else EXTRA.get(name, {})
    cfg = _cfg(name, **{"dp-noise-multiplier": 0.5, **extra})
    strategy = build_aggregator(cfg)
    r = Round()
    n = cfg["clients-per-round"]
    examples = [40 + 5 * p for p in range(n)]
    out = r.aggregate(strategy, _attacked_updates(r.dim, n, MALICIOUS), examples)
    assert list(out) == list(r.global_state)
    w = np.array(examples, dtype=np.float64) / sum(examples)
    for key, value in out.items():
        assert value.dtype == r.global_state[key].dtype and value.shape == r.global_state[key].shape
        assert torch.isfinite(value.float()).all()
        if key not in r.trainable:  # buffers: FedAvg's example-weighted mean, counters stay integers
            expected = sum(wi * s[key].double() for wi, s in zip(w, r.states))
            if value.dtype == torch.int64:
                assert int(value) == round(float(expected))
            else:
                assert torch.allclose(value.double(), expected, atol=1e-6)
    assert all(bool((out[k] > 0).all()) for k in out if k.endswith("running_var"))
    assert strategy.last_info["partitions"] == list(range(n))


def test_dp_clip_clips_the_parameter_update_not_the_buffers() -> None:
    cfg = _cfg("dp-clip", **{"clip-norm": 0.01, "dp-noise-multiplier": 0.0})
    strategy = build_aggregator(cfg)
    r = Round()
    updates = _attacked_updates(r.dim, 10, MALICIOUS)
    out = r.aggregate(strategy, updates, [50] * 10)
    # Flower clips each parameter update to 0.01 and averages; the buffers' differences (num_batches_tracked
    # up to 63 apart) would have dominated the norm and crushed the parameters had they been included.
    factors = torch.clamp(0.01 / updates.norm(dim=1), max=1.0)
    expected = (updates * factors[:, None]).mean(dim=0)
    got = flat_updates({k: r.params[k] for k in r.params}, [{k: out[k] for k in r.params}])[0]
    assert float(got.norm()) == pytest.approx(float(expected.norm()), rel=1e-4)
    assert torch.allclose(got, expected, atol=5e-7)  # float32 round-off of parameters ~0.2 in size
    assert strategy.last_info["clip_bound"] == 0.01


def test_dp_noise_goes_on_parameters_with_flowers_std_and_is_seeded() -> None:
    cfg = _cfg("dp-clip", **{"clip-norm": 0.5, "dp-noise-multiplier": 1.0})
    r = Round()
    updates = _attacked_updates(r.dim, 10, MALICIOUS)  # norms <= 0.26: none clipped at 0.5
    runs = [r.aggregate(build_aggregator(cfg), updates, [50] * 10) for _ in range(2)]
    noise = flat_updates(r.params, [{k: runs[0][k] for k in r.params}])[0] - updates.mean(dim=0)
    assert abs(float(noise.std()) - 1.0 * 0.5 / 10) < 0.002  # Flower: noise_multiplier * clip / clients
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert torch.allclose(runs[0]["body.1.running_var"], torch.full((16,), 0.5 + 0.1 * 4.5))


def test_defense_strategy_records_what_the_rule_decided() -> None:
    cfg = _cfg("multikrum")
    r = Round()
    strategy = DefenseStrategy(build_aggregator(cfg), {9000 + p: p for p in range(10)}, seed=0)
    r.aggregate(strategy, _attacked_updates(r.dim, 10, MALICIOUS), [50] * 10)
    assert strategy.rounds[1].reports["aggregation"]["excluded"] == list(MALICIOUS)
    assert strategy.rounds[1].sampled == list(range(10))


@pytest.mark.parametrize("aggregation", sorted(AGGREGATION_RULES.entries) + ["dp-clip-adaptive"])
def test_every_rule_resumes_from_its_saved_state(aggregation: str, tmp_path: Path) -> None:
    """Round 2 after restoring round 1's saved state (through a weights-only file, as --resume does) equals round
    2 of the uninterrupted rule, for every registered rule; where the rule has state, a fresh rule that skipped
    the restore gives another round 2, so a rule whose state_dict misses something fails here."""
    name = aggregation.removesuffix("-adaptive")
    extra = {} if aggregation.endswith("-adaptive") else EXTRA.get(name, {})
    cfg = _cfg(name, **{"dp-noise-multiplier": 0.5, **extra})
    n = cfg["clients-per-round"]
    r = Round()
    # the attackers' look-alike updates in round 1 only: a rule that remembers them (FoolsGold) treats round 2 so
    first, second = _attacked_updates(r.dim, n, MALICIOUS, seed=1), _attacked_updates(r.dim, n, (), seed=2)
    examples = [40 + 5 * p for p in range(n)]
    straight = build_aggregator(cfg)
    r.aggregate(straight, first, examples, server_round=1)
    torch.save(chain_state(straight), tmp_path / "state.pt")
    expected = r.aggregate(straight, second, examples, server_round=2)

    resumed = build_aggregator(cfg)
    load_chain_state(resumed, torch.load(tmp_path / "state.pt", weights_only=True))
    got = r.aggregate(resumed, second, examples, server_round=2)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    if any(chain_state(straight)):
        fresh = r.aggregate(build_aggregator(cfg), second, examples, server_round=2)
        assert not all(torch.equal(fresh[k], expected[k]) for k in expected), "the state changes round 2"


# --- configurations the rules cannot honour ---------------------------------------------------------------------

def test_bulyan_needs_4f_plus_3_clients_per_round() -> None:
    with pytest.raises(ConfigError, match=r"f = round\(malicious-fraction 0.2 x 10\) = 2 needs n >= 11, got 10.*"
                                          r"clients-per-round >= 11"):
        resolve({"aggregation": "bulyan"})
    resolve({"aggregation": "bulyan", "num-clients": 11, "clients-per-round": 11})
    with pytest.raises(ConfigError, match="malicious-fraction below 0.25"):
        resolve({"aggregation": "bulyan", "malicious-fraction": 0.3})


def test_adaptive_dp_and_rlr_reject_settings_they_cannot_use() -> None:
    with pytest.raises(ConfigError, match="dp-noise-multiplier.*below clients-per-round / 10 = 1"):
        resolve({"aggregation": "dp-clip", "dp-noise-multiplier": 1.0})
    resolve({"aggregation": "dp-clip"})
    resolve({"aggregation": "dp-clip", "dp-noise-multiplier": 0.5})
    resolve({"aggregation": "dp-clip", "clip-norm": 1.0})
    with pytest.raises(ConfigError, match="rlr-threshold': 11 is more than the 10 clients"):
        resolve({"aggregation": "rlr", "rlr-threshold": 11})
    with pytest.raises(ConfigError, match=r"rlr-threshold': 12 \(0: twice the 6 expected malicious\)"):
        resolve({"aggregation": "rlr", "malicious-fraction": 0.6})


def test_adaptive_dp_clipping_bound_grows_when_every_update_is_clipped() -> None:
    """Andrew et al.: all clipped -> the bound grows by exp(lr * target); none clipped -> it shrinks."""
    strategy = build_aggregator(resolve({"aggregation": "dp-clip"})).inner
    bound = strategy.clipping_norm
    strategy._geometric_update(1.0)
    assert strategy.clipping_norm == pytest.approx(bound * math.exp(0.2 * 0.5))
    strategy._geometric_update(0.0)
    strategy._geometric_update(0.0)
    assert strategy.clipping_norm == pytest.approx(bound * math.exp(-0.2 * 0.5))
