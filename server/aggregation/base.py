"""What every aggregation rule shares: the rule interface, the trainable-parameters view, the robust-rule adapter.

A rule is a Flower strategy (Flower's own where Flower has the rule) with the `Rule` interface mixed in:
`last_info` (what it decided in the last round, clients named by partition), and `state_dict` /
`load_state_dict` (what it carries from round to round, saved in every checkpoint; empty for the
stateless rules). Every rule runs inside `TrainableOnly`: it sees the trainable parameters only, so
BatchNorm statistics and the integer num_batches_tracked (which differs with a client's number of
batches) never count in distances, norms, clipping or noise; they are averaged as FedAvg does. The
literature's rules that Flower lacks are tensor functions (`fl_defense.aggregation`) behind `RobustRule`.
"""

from __future__ import annotations

import copy
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_defense.aggregation import Aggregate, State, average_states
from fl_defense.data import dataset_spec
from fl_defense.models import build_model
from fl_defense.protocol import CLIENT, NUM_EXAMPLES, PARTITION_ID
from fl_defense.registry import AGGREGATION_RULES, CrossCheck, non_negative
from fl_defense.server.strategy import StrategyWrapper

WEIGHT_KEY = NUM_EXAMPLES


def round_seed(seed: int, server_round: int) -> int:
    """The seed of a round's aggregation noise: the same run config gives the same noise."""
    return (seed * 1_000_003 + server_round) % 2**32


def partition_id(msg: Message) -> int:
    """A checked reply's partition id (its client record, which validation matched to the node's)."""
    client = msg.content.config_records.get(CLIENT)
    if client is not None and PARTITION_ID in client:
        return int(client[PARTITION_ID])  # type: ignore[arg-type]
    return msg.metadata.src_node_id


def trainable_names(cfg: Mapping[str, Any]) -> frozenset[str]:
    """Names of the configured model's parameters: the keys whose changes are a client's update."""
    model = build_model(cfg["model"], dataset_spec(cfg["dataset"]))
    return frozenset(name for name, _ in model.named_parameters())


def array_record(content: RecordDict) -> tuple[str, ArrayRecord]:
    """The one ArrayRecord of a train reply (Flower checks there is exactly one) and its key."""
    return next(iter(content.array_records.items()))


def reply_weight(content: RecordDict, key: str = WEIGHT_KEY) -> float:
    """A reply's aggregation weight (its example count) from its one MetricRecord."""
    return float(next(iter(content.metric_records.values()))[key])  # type: ignore[arg-type]


class Rule:
    """The interface every aggregation rule adds to its Flower strategy (mixed in before it)."""

    last_info: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """What the rule carries from round to round, as plain tensors and numbers; empty when stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict` (nothing to restore for a stateless rule)."""


RuleFactory = Callable[..., Strategy]


def flower_rule(name: str, strategy: type[Strategy], summary: str,
                kwargs: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda cfg: {},
                checks: Sequence[CrossCheck] = ()) -> type[Strategy]:
    """Register one of Flower's stateless strategies as a rule, with the keyword arguments it takes from config."""

    class FlowerRule(Rule, strategy):  # type: ignore[misc, valid-type]
        def __init__(self, cfg: Mapping[str, Any], **common: Any) -> None:
            super().__init__(**common, **kwargs(cfg))

    FlowerRule.__name__ = FlowerRule.__qualname__ = f"{strategy.__name__}Rule"
    return AGGREGATION_RULES.register(name, checks=checks, summary=summary)(FlowerRule)


class SelectionRecorder:
    """A `train_metrics_aggr_fn` that remembers the replies it was given.

    Flower's strategies aggregate the metrics of exactly the replies they kept (Krum: one, MultiKrum and
    Bulyan: their selection, the others: all), so this is where the server learns who was left out
    without rewriting those strategies.
    """

    def __init__(self) -> None:
        self.kept: list[RecordDict] = []

    def __call__(self, records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        self.kept = list(records)
        return aggregate_metricrecords(records, weighted_by_key)


class TrainableOnly(StrategyWrapper):
    """Runs a rule on the trainable parameters; the other state entries are averaged by example count.

    The rule sees parameter-only arrays everywhere (its own copy of the global model, as kept by FedAvgM or
    the DP wrappers, and the replies), while clients still receive the full state. Replies are copied, not
    changed, so callers can still read them after aggregation. Reports, under `aggregation`, the partitions
    aggregated, those the rule left out, the rule's own `last_info` and its seconds.
    """

    report_key = "aggregation"

    def __init__(self, inner: Strategy, trainable: Collection[str], recorder: SelectionRecorder) -> None:
        super().__init__(inner)
        self.trainable = frozenset(trainable)
        self.recorder = recorder

    def _parameters(self, arrays: ArrayRecord) -> ArrayRecord:
        return ArrayRecord({k: v for k, v in arrays.items() if k in self.trainable})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, self._parameters(arrays), config, grid))
        for msg in messages:
            for key in list(msg.content.array_records):
                msg.content[key] = arrays
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.last_info = None
        self.recorder.kept = []
        copies: dict[int, Message] = {}
        rest: list[dict[str, torch.Tensor]] = []
        weights: list[float] = []
        dtypes: dict[str, torch.dtype] = {}
        for msg in replies:
            if msg.has_error():
                continue
            key, record = array_record(msg.content)
            dtypes = dtypes or {k: getattr(torch, v.dtype) for k, v in record.items()}  # "float32" -> torch.float32
            content = RecordDict({**dict(msg.content.items()), key: self._parameters(record)})
            copies[id(msg)] = Message(metadata=copy.copy(msg.metadata), content=content)
            rest.append({k: torch.from_numpy(v.numpy()) for k, v in record.items() if k not in self.trainable})
            weights.append(reply_weight(msg.content))
        if not copies:
            return self.inner.aggregate_train(server_round, replies)
        started = time.perf_counter()
        arrays, metrics = self.inner.aggregate_train(server_round, [copies.get(id(m), m) for m in replies])
        if arrays is None:
            return None, metrics
        merged = {**arrays.to_torch_state_dict(), **average_states(rest, weights)}
        state = {k: merged[k].to(dtype) for k, dtype in dtypes.items()}  # the clients' key order and dtypes
        self.last_info = {**self._info(replies, copies), "seconds": time.perf_counter() - started}
        return ArrayRecord(state), metrics

    def _info(self, replies: list[Message], copies: dict[int, Message]) -> dict[str, Any]:
        """Partitions aggregated, those the rule left out, and whatever else it reports."""
        valid = [m for m in replies if id(m) in copies]
        info: dict[str, Any] = {"partitions": [partition_id(m) for m in valid]}
        if self.recorder.kept:
            kept = {id(content) for content in self.recorder.kept}
            info["excluded"] = [partition_id(m) for m in valid if id(copies[id(m)].content) not in kept]
        info.update(getattr(self.inner, "last_info", None) or {})
        return info


class RobustRule(Rule, FedAvg):
    """FedAvg's sampling, reply checks and metrics, with a tensor rule of `fl_defense.aggregation` for the arrays.

    Like Flower's server-side DP wrappers it keeps the arrays it sent (configure_train) to form updates.
    """

    def __init__(self, cfg: Mapping[str, Any], **common: Any) -> None:
        super().__init__(**common)
        self.cfg = cfg
        self.current_arrays = ArrayRecord()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.last_info = None
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        states = [array_record(c)[1].to_torch_state_dict() for c in contents]
        weights = [reply_weight(c, self.weighted_by_key) for c in contents]
        partitions = [partition_id(m) for m in valid]
        generator = torch.Generator().manual_seed(round_seed(self.cfg["seed"], server_round))
        result = self.combine(self.current_arrays.to_torch_state_dict(), states, partitions, weights, generator)
        info = dict(result.info)
        for key in ("excluded", "clipped"):
            if key in info:
                info[key] = [partitions[i] for i in info[key]]
        self.last_info = info
        return ArrayRecord(result.state), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    @abstractmethod
    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        """The rule: new global state from the clients' states (partition ids, example counts, a seeded generator)."""


def build_aggregator(cfg: Mapping[str, Any], nodes: int | None = None) -> TrainableOnly:
    """The configured rule on the model's trainable parameters, sampling `clients-per-round` of `num-clients`, or
    the same share of `nodes` when fewer nodes were accepted (a refused node must not leave sampling waiting)."""
    recorder = SelectionRecorder()
    available = cfg["num-clients"] if nodes is None else min(nodes, cfg["num-clients"])
    common = {
        "fraction_train": cfg["clients-per-round"] / cfg["num-clients"],
        "min_train_nodes": min(cfg["clients-per-round"], available),
        "min_available_nodes": available,
        "fraction_evaluate": 0.0,
        "weighted_by_key": WEIGHT_KEY,
        "train_metrics_aggr_fn": recorder,
    }
    return TrainableOnly(AGGREGATION_RULES[cfg["aggregation"]](cfg, **common), trainable_names(cfg), recorder)


AGGREGATION_RULES.family(options=[non_negative(
    "clip-norm", 0.0, "L2 bound on each client's update of the trainable parameters, for dp-clip and normclip; 0: "
    "normclip clips to the round's median update norm, dp-clip adapts the bound (Flower's adaptive clipping)")])
