"""Shadow learning: SPECTRE's scores and filter, the shadow's early stopping and restart, the strategy on fake
replies of the real CNN's state (no Ray), and one short run through Flower and Ray."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_defense.aggregation import average_states
from fl_defense.attacks import ground_truth, malicious_clients
from fl_defense.config import resolve
from fl_defense.data import dataset_spec
from fl_defense.defense import defense_rounds
from fl_defense.errors import ConfigError
from fl_defense.models import build_model
from fl_defense.protocol import SHADOW_ARRAYS as SHADOW_ARRAYS_KEY
from fl_defense.server.aggregation import build_aggregator
from fl_defense.server.strategy import DefenseStrategy, ServerContext
from fl_defense.server.wrappers.shadow import FROZEN, ShadowSchedule, ShadowStrategy
from fl_defense.server.wrappers.spectre import drop_count, filter_clients, que_scores

# --- SPECTRE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [4.0, 0.0])
def test_que_scores_match_the_hand_computation(alpha: float) -> None:
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-2.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    # Sigma = z^T z / 4 = diag(2, 0.5), ||Sigma||_2 - 1 = 1, so Q = expm(alpha diag(1, -0.5)) = diag(e^a, e^-a/2).
    q1, q2 = math.exp(alpha), math.exp(-alpha / 2)
    expected = torch.tensor([4 * q1, q2, 4 * q1, q2], dtype=torch.float64) / (q1 + q2)
    assert torch.allclose(que_scores(z, alpha), expected)


def test_que_scores_without_excess_spread_are_the_squared_norms_over_k() -> None:
    z = torch.tensor([[0.5, 0.0], [0.0, -0.5]], dtype=torch.float64)  # Sigma = diag(1/8, 1/8): nothing above 1
    assert torch.allclose(que_scores(z, 4.0), torch.tensor([0.125, 0.125], dtype=torch.float64))


def test_drop_count_is_floored_and_keeps_one_client() -> None:
    assert drop_count(10, 0.2, 1.5) == 3
    assert drop_count(50, 0.15, 1.5) == 11
    assert drop_count(4, 0.75, 1.5) == 3
    assert drop_count(10, 0.0, 1.5) == 0


@pytest.mark.parametrize("seed", range(5))
def test_planted_outliers_are_the_ones_dropped(seed: int) -> None:
    """40 isotropic updates and 5 shifted by 8 standard deviations along one direction (d = 20 < n, so PCA sees
    the shift; a weaker or tighter planted cluster can be absorbed by the robust estimate, see the module)."""
    g = torch.Generator().manual_seed(seed)
    d, honest, planted = 20, 40, 5
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    x = torch.randn(honest + planted, d, generator=g, dtype=torch.float64)
    x[honest:] += 8 * direction.double()
    result = filter_clients(x, planted / (honest + planted))
    assert len(result.dropped) == 7 and len(result.kept) == 38
    assert set(range(honest, honest + planted)) <= set(result.dropped)
    assert sorted(result.kept + result.dropped) == list(range(honest + planted))


def test_filter_keeps_a_lone_client() -> None:
    assert filter_clients(torch.randn(1, 5), 0.5).kept == [0]


# --- early stopping and restart ---------------------------------------------------------------------------------

def test_schedule_waits_trains_freezes_and_restarts() -> None:
    s = ShadowSchedule(start=2, patience=2, min_delta=0.01, restart_shift=0.05)
    steps = [  # (round, its state, backbone acc, shadow acc, event)
        (1, "waiting", 0.50, None, None),
        (2, "started", 0.60, 0.500, None),
        (3, "training", 0.60, 0.505, None),  # no gain above min_delta: stale 1
        (4, "training", 0.62, 0.510, "froze"),  # stale 2 = patience; the backbone had 0.62
        (5, "frozen", 0.66, None, None),  # shift 0.04
        (6, "frozen", 0.56, None, "restart-due"),  # shift 0.06
        (7, "restarted", 0.56, 0.300, None),
        (8, "training", 0.56, 0.320, None),
    ]
    for server_round, state, backbone, shadow, event in steps:
        assert s.begin(server_round) == state, server_round
        assert s.end(backbone, shadow) == event, server_round
    assert s.best == 0.32 and s.stale == 0


# --- the strategy on fake replies ---------------------------------------------------------------------------------

class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when its strategy builds messages."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def _moved(state: dict[str, torch.Tensor], g: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 3
            for k, v in state.items()}


def _reply(node: int, partition: int, backbone: dict[str, torch.Tensor], shadow: dict[str, torch.Tensor]) -> Message:
    content = RecordDict({
        "arrays": ArrayRecord(backbone),
        SHADOW_ARRAYS_KEY: ArrayRecord(shadow),
        "metrics": MetricRecord({"num-examples": 100 + 10 * partition, "train-loss": 1.0}),
        "client": ConfigRecord({"partition-id": partition}),
    })
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, content=content)


@pytest.mark.usefixtures("server_identity")
@pytest.mark.parametrize("aggregation", ["fedavg", "fedmedian"])
def test_malicious_replies_are_dropped_from_the_shadow_which_is_the_fedavg_of_the_kept(aggregation: str) -> None:
    cfg = resolve({"strategy-wrapper": "shadow", "aggregation": aggregation, "num-clients": 10,
                   "clients-per-round": 10, "malicious-fraction": 0.2, "device": "cpu"})
    torch.manual_seed(0)
    initial = build_model("cnn", dataset_spec("fashion-mnist")).state_dict()
    nodes = {7000 + 13 * p: p for p in range(10)}
    bad = set(malicious_clients(10, 0.2, cfg["seed"]))
    accuracies: list[float] = []

    def accuracy(arrays: ArrayRecord) -> float:
        accuracies.append(0.5)
        return 0.5

    def truth(partitions: list[int], server_round: int) -> tuple[list[int], list[int]]:
        return ground_truth(cfg, partitions, server_round)

    shadow = ShadowStrategy(build_aggregator(cfg), cfg, ServerContext(ArrayRecord(initial), accuracy, truth))
    strategy = DefenseStrategy(shadow, nodes, cfg["seed"], truth=truth)
    messages = list(strategy.configure_train(1, ArrayRecord(initial), ConfigRecord(), FakeGrid(list(nodes))))
    assert len(messages) == 10
    sent = messages[0].content[SHADOW_ARRAYS_KEY].to_torch_state_dict()
    assert all(torch.equal(sent[k], initial[k]) for k in initial), "the shadow starts from the initial weights"

    g = torch.Generator().manual_seed(1)
    backdoor = torch.zeros_like(initial["head.weight"])
    backdoor[0] = 0.05  # every attacker pulls the target label's row the same way
    replies, shadows, weights = [], {}, {}
    for node, p in nodes.items():
        state = _moved(initial, g, 0.01)
        if p in bad:
            state["head.weight"] = state["head.weight"] + backdoor
        shadows[p] = _moved(initial, g, 0.01)
        weights[p] = 100.0 + 10 * p
        replies.append(_reply(node, p, state, shadows[p]))
    arrays, metrics = strategy.aggregate_train(1, reversed(replies))

    assert arrays is not None and metrics is not None
    assert SHADOW_ARRAYS_KEY not in arrays and set(arrays.keys()) == set(initial)
    record = strategy.rounds[1].reports["shadow"]
    assert record["state"] == "started" and record["partitions"] == list(range(10))
    assert bad <= set(record["dropped"]) and len(record["dropped"]) == 3 and record["malicious_kept"] == []
    assert strategy.rounds[1].malicious == sorted(bad)
    kept = record["kept"]
    expected = average_states([shadows[p] for p in kept], [weights[p] for p in kept])
    assert shadow.shadow is not None
    got = shadow.shadow.to_torch_state_dict()
    assert all(torch.allclose(got[k].double(), expected[k].double(), atol=1e-6) for k in expected)
    assert all(got[k].dtype == initial[k].dtype for k in initial), "integer counters stay integers"
    assert strategy.deployed(arrays) is shadow.shadow and strategy.server() is shadow
    assert record["backbone_clean_acc"] == 0.5 and record["shadow_clean_acc"] == 0.5 and len(accuracies) == 2

    shadow.schedule.phase = FROZEN
    frozen = list(strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid(list(nodes))))
    assert all(SHADOW_ARRAYS_KEY not in m.content.array_records for m in frozen), "a frozen shadow costs no training"


# --- configuration ------------------------------------------------------------------------------------------------

def test_shadow_is_not_a_purifier_and_bad_settings_fail_early() -> None:
    assert defense_rounds(resolve({"defense": "shadow", "defense-schedule": "every:2"})) == []
    with pytest.raises(ConfigError, match="shadow-drop-factor.*leaving none"):
        resolve({"defense": "shadow", "malicious-fraction": 0.7})  # floor(1.5 x 7) = 10 of 10
    with pytest.raises(ConfigError, match="shadow-start"):
        resolve({"defense": "shadow", "rounds": 3, "shadow-start": 4})
    resolve({"defense": "none", "malicious-fraction": 0.7})


# --- through Flower and Ray ---------------------------------------------------------------------------------------

@pytest.mark.simulation
def test_shadow_through_flower_and_ray(tmp_path: Path) -> None:
    """4 clients, 1 malicious, so one client a round is dropped; min-delta 1 freezes the shadow after round 2."""
    from fl_defense.simulations.runner import run_experiment

    cfg = resolve({"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05, "rounds": 3,
                   "malicious-fraction": 0.25, "device": "cpu", "defense": "shadow", "shadow-patience": 1,
                   "shadow-min-delta": 1.0, "out-dir": str(tmp_path)})
    results = run_experiment(cfg, tmp_path)
    rounds = results["rounds"]

    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[0]["deployed"] == "backbone" and rounds[0]["ba"] == rounds[0]["backbone_ba"]
    states = [r["shadow"]["state"] for r in rounds[1:]]
    assert states == ["started", "training", "frozen"]
    assert rounds[2]["shadow"]["event"] == "froze"
    for row in rounds[1:]:
        assert row["deployed"] == "shadow" and row["failures"] == 0
        assert {"backbone_ba", "backbone_asr"} <= set(row) and 0 <= row["shadow"]["backbone_clean_acc"] <= 1
    for row in rounds[1:3]:
        shadow = row["shadow"]
        assert len(shadow["dropped"]) == 1 and len(shadow["kept"]) == 3 and len(shadow["scores"]) == 4
        assert sorted(shadow["kept"] + shadow["dropped"]) == [0, 1, 2, 3]
        caught = shadow["filtering"]["tp"]  # scored against the malicious client the config and seed name
        assert (shadow["filtering"]["fp"], shadow["filtering"]["fn"]) == (1 - caught, 1 - caught)
    assert "kept" not in rounds[3]["shadow"]
    assert results["filtering"]["shadow"]["rounds"] == 2
    assert (rounds[3]["ba"], rounds[3]["asr"]) == (rounds[2]["ba"], rounds[2]["asr"]), "the frozen shadow is deployed"
    assert rounds[1]["ba"] > 0.2 and rounds[3]["backbone_ba"] > 0.2, "both models learn (chance: 0.1)"
    final = torch.load(tmp_path / "checkpoints" / "final.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v.float()).all() for v in final.values())
