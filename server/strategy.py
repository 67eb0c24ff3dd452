"""A strategy wrapper that makes any Flower strategy reproducible, observable and defendable.

`DefenseStrategy` delegates every step to the wrapped strategy (FedAvg, Krum, ...) and adds:
- seeded client sampling in partition order, so the same seed samples the same clients;
- replies sorted by partition before aggregation, so floating-point sums are reproducible;
- every reply checked before the inner strategy sees it (`server.validation`): an invalid one is left out
  of the round with its reason recorded, and a round with fewer than `min_replies` valid replies keeps
  the global model unchanged;
- a record of who was sampled and who attacked, taken before the inner strategy consumes the replies,
  and of what the aggregation rule decided when it reports that (`ReportsAggregation`);
- a hook that may replace the aggregated model (a server-side defense) on scheduled rounds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.validation import ReplySpec, validate

AggregatedHook = Callable[[int, ArrayRecord], ArrayRecord]


@runtime_checkable
class ReportsAggregation(Protocol):
    """A strategy that tells what its last aggregation decided (excluded partitions, weights, clip bound, ...)."""

    last_info: dict[str, Any] | None


@dataclass
class RoundInfo:
    """What the server learned in one round's training step."""

    sampled: list[int] = field(default_factory=list)
    malicious: list[int] = field(default_factory=list)
    attacked: list[int] = field(default_factory=list)
    failures: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False
    train_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    aggregation: dict[str, Any] = field(default_factory=dict)


class _PartitionOrderedGrid:
    """A view of a Grid whose node ids come in partition order (Flower's node ids are random per run)."""

    def __init__(self, grid: Grid, order: list[int]) -> None:
        self._grid = grid
        self._order = order

    def get_node_ids(self) -> list[int]:
        live = set(self._grid.get_node_ids())
        return [n for n in self._order if n in live]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class DefenseStrategy(Strategy):
    """Wraps a strategy; see the module docstring. `node_partition` maps node id to partition id."""

    def __init__(self, inner: Strategy, node_partition: dict[int, int], seed: int,
                 on_aggregated: AggregatedHook | None = None, spec: ReplySpec | None = None,
                 min_replies: int = 1) -> None:
        self.inner = inner
        self.node_partition = node_partition
        self.seed = seed
        self.on_aggregated = on_aggregated
        self.spec = spec
        self.min_replies = min_replies
        self.rounds: dict[int, RoundInfo] = {}
        self._started: float = 0.0
        self._sent: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._started = time.perf_counter()
        self._sent = {k: a.numpy() for k, a in arrays.items()} if self.spec is not None else {}
        order = sorted(self.node_partition, key=self.node_partition.__getitem__)
        random.seed(self.seed * 1_000_003 + server_round)
        view = _PartitionOrderedGrid(grid, order)
        return self.inner.configure_train(server_round, arrays, config, view)  # type: ignore[arg-type]

    def _partition(self, msg: Message) -> int:
        return self.node_partition.get(msg.metadata.src_node_id, -1)

    def screen(self, replies: Iterable[Message]) -> tuple[list[Message], list[dict[str, Any]]]:
        """The replies that pass the checks of `server.validation` (all but errors without a spec), and the
        rejected ones with their reasons."""
        if self.spec is not None:
            return validate(replies, self._partition, self._sent, self.spec)
        replies = list(replies)
        return ([m for m in replies if not m.has_error()],
                [{"partition": self._partition(m), "node": m.metadata.src_node_id, "reason": "the client failed"}
                 for m in replies if m.has_error()])

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = sorted(replies, key=self._partition)
        info = RoundInfo()
        for msg in replies:
            pid = self._partition(msg)
            info.sampled.append(pid)
            if msg.has_error():
                info.failures += 1
                continue
            client = msg.content.config_records.get("client")
            if client is not None and client.get("malicious"):
                info.malicious.append(pid)
                if client.get("attacked"):
                    info.attacked.append(pid)
        valid, info.rejected = self.screen(replies)
        if len(valid) < self.min_replies:
            info.skipped = True
            info.seconds = time.perf_counter() - self._started
            self.rounds[server_round] = info
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, valid)
        if isinstance(self.inner, ReportsAggregation):
            info.aggregation = dict(self.inner.last_info or {})
        info.train_metrics = {k: float(v) for k, v in (metrics or {}).items() if not isinstance(v, list)}
        if arrays is not None and self.on_aggregated is not None:
            arrays = self.on_aggregated(server_round, arrays)
        info.seconds = time.perf_counter() - self._started
        self.rounds[server_round] = info
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


class Resumed(Strategy):
    """Wraps a strategy so that Flower's round numbers 1, 2, ... are rounds offset + 1, offset + 2, ...: a
    resumed run continues the numbering (and with it every per-round seed) where its checkpoint stopped."""

    def __init__(self, inner: Strategy, offset: int) -> None:
        self.inner = inner
        self.offset = offset

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)
