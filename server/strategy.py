"""The server's strategy pipeline: one forwarding base for the wrappers, and the wrapper that checks and records.

The strategy a run starts is a chain of wrappers around the aggregation rule, outermost first:
`DefenseStrategy` (seeded sampling, reply checks, ground truth, the defense hook) -> an optional strategy
wrapper (`strategy-wrapper=`, e.g. shadow learning) -> `TrainableOnly` (the rule sees the trainable
parameters only) -> the rule (a Flower strategy). Each wrapper forwards what it does not change
(`StrategyWrapper`, the shape of Flower's own DP wrappers), says what it decided in `last_info` under its
`report_key`, and keeps what it carries between rounds in `state_dict`; the outermost collects the reports,
and the checkpoint saves and restores the states along the chain, whatever the wrappers are.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fl_defense.server.validation import ReplySpec, Sent, validate
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

AggregatedHook = Callable[[int, ArrayRecord], ArrayRecord]
GroundTruth = Callable[[list[int], int], tuple[list[int], list[int]]]  # (partitions, round) -> (malicious, attacking)


class StrategyWrapper(Strategy):
    """Forwards every step to `inner`; a wrapper overrides only the steps it changes.

    `last_info` is what the wrapper decided in the last round (None: nothing to report), recorded in the round's
    row under `report_key`; `state_dict`/`load_state_dict` hold what it carries between rounds (checkpoints);
    `deployed` is the model it serves instead of the one the clients train, if any, with a version number that
    changes whenever that model does.
    """

    report_key: ClassVar[str | None] = None
    serves: ClassVar[str | None] = None  # the name of the model it deploys instead of the trained one (if it can)
    trains: ClassVar[str] = "training"  # the name it gives the trained model then
    last_info: dict[str, Any] | None = None

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict` (nothing to restore by default)."""

    def deployed(self) -> tuple[ArrayRecord, int] | None:
        return None


def chain(strategy: Strategy) -> list[Strategy]:
    """The strategy and every strategy it wraps, outermost first; the last is the aggregation rule."""
    out = [strategy]
    while isinstance(out[-1], StrategyWrapper):
        out.append(out[-1].inner)
    return out


def chain_state(strategy: Strategy) -> list[dict[str, Any]]:
    """What every piece of the chain carries between rounds, in chain order (for a checkpoint)."""
    return [piece.state_dict() for piece in chain(strategy)]  # type: ignore[attr-defined]


def load_chain_state(strategy: Strategy, states: list[Mapping[str, Any]]) -> None:
    pieces = chain(strategy)
    if len(pieces) != len(states):
        raise ValueError(f"a chain of {len(pieces)} strategies cannot take {len(states)} saved states")
    for piece, state in zip(pieces, states, strict=True):
        piece.load_state_dict(state)  # type: ignore[attr-defined]


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
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def _nobody(partitions: list[int], server_round: int) -> tuple[list[int], list[int]]:
    return [], []


@dataclass(frozen=True)
class ServerContext:
    """What a strategy wrapper may need of the server: the initial model, the accuracy of a model on the server's
    clean set, and the ground truth of who is malicious and attacking among some partitions in a round."""

    initial: ArrayRecord
    clean_accuracy: Callable[[ArrayRecord], float]
    truth: GroundTruth = _nobody


class DefenseStrategy(StrategyWrapper):
    """The outermost wrapper: makes any strategy chain reproducible, observable and defendable.

    - seeded client sampling in partition order, so the same seed samples the same clients;
    - replies sorted by partition before aggregation, so floating-point sums are reproducible;
    - every reply checked before the chain sees it (`fl_defense.server.validation`): an invalid one is left out
      of the round with its reason recorded, and a round with fewer than `min_replies` valid replies keeps the
      global model unchanged;
    - a record of who was sampled, and who of them is malicious and attacked by `truth` (the config and
      seed, never the clients' word), and of what every wrapper below decided;
    - a hook that may replace the aggregated model (the server-side defense) on scheduled rounds.
    `node_partition` maps node id to partition id.
    """

    def __init__(self, inner: Strategy, node_partition: dict[int, int], seed: int, *,
                 truth: GroundTruth = _nobody, on_aggregated: AggregatedHook | None = None,
                 spec: ReplySpec | None = None, min_replies: int = 1) -> None:
        super().__init__(inner)
        self.node_partition, self.seed, self.truth = node_partition, seed, truth
        self.on_aggregated, self.spec, self.min_replies = on_aggregated, spec, min_replies
        self.rounds: dict[int, RoundInfo] = {}
        self._started = 0.0
        self._sent: Sent = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._started = time.perf_counter()
        order = sorted(self.node_partition, key=self.node_partition.__getitem__)
        random.seed(self.seed * 1_000_003 + server_round)
        messages = list(self.inner.configure_train(server_round, arrays, config,
                                                   _PartitionOrderedGrid(grid, order)))  # type: ignore[arg-type]
        sent = messages[0].content.array_records.items() if messages and self.spec is not None else []
        self._sent = {key: {k: a.numpy() for k, a in record.items()} for key, record in sent}
        return messages

    def _partition(self, msg: Message) -> int:
        return self.node_partition.get(msg.metadata.src_node_id, -1)

    def screen(self, replies: list[Message]) -> tuple[list[Message], list[dict[str, Any]]]:
        """The replies that pass the checks of `validation` (all but errors without a spec), and the rejected
        ones with their reasons."""
        if self.spec is not None:
            return validate(replies, self._partition, self._sent, self.spec)
        return ([m for m in replies if not m.has_error()],
                [{"partition": self._partition(m), "node": m.metadata.src_node_id, "reason": "the client failed"}
                 for m in replies if m.has_error()])

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = sorted(replies, key=self._partition)
        info = RoundInfo(sampled=[self._partition(m) for m in replies], failures=sum(m.has_error() for m in replies))
        info.malicious, info.attacked = self.truth(info.sampled, server_round)
        valid, info.rejected = self.screen(replies)
        self.rounds[server_round] = info
        if len(valid) < self.min_replies:
            info.skipped = True
            info.seconds = time.perf_counter() - self._started
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, valid)
        info.reports = {p.report_key: dict(p.last_info) for p in chain(self.inner)[:-1]
                        if isinstance(p, StrategyWrapper) and p.report_key and p.last_info is not None}
        info.train_metrics = {k: float(v) for k, v in (metrics or {}).items() if not isinstance(v, list)}
        if arrays is not None and self.on_aggregated is not None:
            arrays = self.on_aggregated(server_round, arrays)
        info.seconds = time.perf_counter() - self._started
        return arrays, metrics

    def server(self) -> StrategyWrapper | None:
        """The wrapper below that can deploy a model other than the trained one (shadow learning), if any."""
        return next((p for p in chain(self.inner)[:-1] if isinstance(p, StrategyWrapper) and p.serves), None)

    def deployed(self, trained: ArrayRecord) -> ArrayRecord:
        """The model the server deploys: what a serving wrapper serves, once it serves one; else the trained one."""
        server = self.server()
        served = None if server is None else server.deployed()
        return trained if served is None else served[0]


class Resumed(StrategyWrapper):
    """Wraps a strategy so that Flower's round numbers 1, 2, ... are rounds offset + 1, offset + 2, ...: a
    resumed run continues the numbering (and with it every per-round seed) where its checkpoint stopped."""

    def __init__(self, inner: Strategy, offset: int) -> None:
        super().__init__(inner)
        self.offset = offset

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
