"""DefenseStrategy without Ray: seeded partition-ordered sampling, order-free aggregation, the hook."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian
from flwr.supercore.task_identity import TaskIdentity

from fl_defense.attacks import ground_truth, malicious_clients
from fl_defense.config import resolve
from fl_defense.server.strategy import DefenseStrategy


class FakeGrid:
    """Just enough of a Grid for sampling: node ids in an arbitrary order."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _reply(node: int, partition: int, value: float, claims: dict[str, bool] | None = None) -> Message:
    """A train reply; `claims` adds what a client might say about itself (the protocol has no such keys)."""
    content = RecordDict({
        "arrays": ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))}),
        "metrics": MetricRecord({"num-examples": 10 + partition, "train-loss": value}),
        "client": ConfigRecord({"partition-id": partition, **(claims or {})}),
    })
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, content=content)


def _sampled_partitions(node_partition: dict[int, int], seed: int, k: int) -> list[int]:
    nodes = list(node_partition)
    random.Random(seed + 99).shuffle(nodes)  # the Grid's order is not ours to rely on
    strategy = DefenseStrategy(FedAvg(fraction_train=k / len(nodes), min_train_nodes=k,
                                      min_available_nodes=len(nodes), fraction_evaluate=0.0), node_partition, seed)
    msgs = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid(nodes))  # type: ignore[arg-type]
    return sorted(node_partition[m.metadata.dst_node_id] for m in msgs)


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set when its strategy builds messages."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


@pytest.mark.usefixtures("server_identity")
def test_sampling_depends_on_seed_and_partitions_not_on_node_ids() -> None:
    run_a = {1000 + 7 * p: p for p in range(20)}
    run_b = {987654321 - 13 * p: p for p in range(20)}
    assert _sampled_partitions(run_a, seed=3, k=5) == _sampled_partitions(run_b, seed=3, k=5)
    assert len({tuple(_sampled_partitions(run_a, seed=s, k=5)) for s in range(6)}) > 1


def test_aggregation_is_independent_of_reply_order_and_records_attackers() -> None:
    mapping = {501: 0, 502: 1, 503: 2}
    values = {501: 0.1, 502: 0.7, 503: 0.3}
    results = []
    for order in ([501, 502, 503], [503, 501, 502]):
        strategy = DefenseStrategy(FedAvg(), mapping, seed=0, truth=lambda parts, r: ([1], [1]))
        arrays, metrics = strategy.aggregate_train(1, [_reply(n, mapping[n], values[n]) for n in order])
        results.append(arrays["w"].numpy())
        info = strategy.rounds[1]
        assert info.sampled == [0, 1, 2]
        assert info.malicious == [1] and info.attacked == [1]
        assert metrics is not None and "train-loss" in metrics
    assert np.array_equal(results[0], results[1])
    expected = (10 * 0.1 + 11 * 0.7 + 12 * 0.3) / 33
    assert np.allclose(results[0], expected)


def test_hook_replaces_the_aggregate_and_sees_the_round() -> None:
    seen: list[int] = []

    def hook(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        seen.append(server_round)
        return ArrayRecord({"w": Array(arrays["w"].numpy() * 0)})

    strategy = DefenseStrategy(FedMedian(), {1: 0, 2: 1, 3: 2}, seed=0, on_aggregated=hook)
    arrays, _ = strategy.aggregate_train(4, [_reply(n, n - 1, float(n)) for n in (1, 2, 3)])
    assert seen == [4]
    assert np.array_equal(arrays["w"].numpy(), np.zeros(3, dtype=np.float32))
    assert strategy.rounds[4].malicious == []


def test_who_attacked_comes_from_the_config_not_from_the_clients_word() -> None:
    """An honest partition claiming to be the attacker, and the real attacker claiming to be honest: the record
    names the config's malicious client, and only in the rounds of its attack schedule."""
    cfg = resolve({"num-clients": 4, "clients-per-round": 4, "malicious-fraction": 0.25,
                   "attack-schedule": "window:2-3"})
    (bad,) = malicious_clients(4, 0.25, cfg["seed"])
    honest = next(p for p in range(4) if p != bad)
    mapping = {700 + p: p for p in range(4)}
    strategy = DefenseStrategy(FedAvg(), mapping, seed=0, truth=lambda parts, r: ground_truth(cfg, parts, r))
    for server_round in (1, 2):
        replies = [_reply(700 + p, p, 0.5, {"malicious": p == honest, "attacked": p == honest}) for p in range(4)]
        strategy.aggregate_train(server_round, replies)
    assert strategy.rounds[1].malicious == [bad] and strategy.rounds[1].attacked == []
    assert strategy.rounds[2].malicious == [bad] and strategy.rounds[2].attacked == [bad]
    poisoned = resolve({**cfg, "threat": "poisoned-data", "attack-schedule": "always"})
    assert ground_truth(poisoned, range(4), 1) == ([bad], [bad])
    assert ground_truth(resolve({**cfg, "attack": "none"}), range(4), 2) == ([bad], [])
