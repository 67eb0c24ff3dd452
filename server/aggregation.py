"""Aggregation rules by name, as Flower strategies configured from the run config.

Flower's own strategies where Flower has the rule (FedAvg ... Krum, Bulyan, server-side DP clipping);
the literature's robust rules (FLAME, FoolsGold, RLR, norm clipping) as FedAvg subclasses around the
tensor functions of `fl_defense.aggregation`. Every rule is wrapped in `TrainableOnly`: it sees the
trainable parameters only, so BatchNorm statistics and the integer num_batches_tracked (which differs
with a client's number of batches) never count in distances, norms, clipping or noise; they are
averaged as FedAvg does. Each built strategy reports what it decided in `last_info` (see
`server.strategy.ReportsAggregation`), clients named by partition id.
"""

from __future__ import annotations

import copy
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan, DifferentialPrivacyServerSideAdaptiveClipping, DifferentialPrivacyServerSideFixedClipping, FedAvg, FedAvgM,
    FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.differential_privacy import compute_stdv

from fl_defense.aggregation import Aggregate, State, average_states, default_threshold, flame, foolsgold, normclip, rlr
from fl_defense.config import expected_malicious
from fl_defense.data.datasets import SPECS
from fl_defense.models import build_model
from server.strategy import ReportsAggregation

WEIGHT_KEY = "num-examples"


def round_seed(seed: int, server_round: int) -> int:
    """The seed of a round's aggregation noise: the same run config gives the same noise."""
    return (seed * 1_000_003 + server_round) % 2**32


def partition_id(msg: Message) -> int:
    """A reply's partition id (its "client" ConfigRecord), or its node id when it carries none."""
    client = msg.content.config_records.get("client")
    if client is not None and "partition-id" in client:
        return int(client["partition-id"])  # type: ignore[arg-type]
    return msg.metadata.src_node_id


def trainable_names(cfg: Mapping[str, Any]) -> frozenset[str]:
    """Names of the configured model's parameters: the keys whose changes are a client's update."""
    model = build_model(cfg["model"], SPECS[cfg["dataset"]])
    return frozenset(name for name, _ in model.named_parameters())


def _array_record(content: RecordDict) -> tuple[str, ArrayRecord]:
    """The one ArrayRecord of a train reply (Flower checks there is exactly one) and its key."""
    return next(iter(content.array_records.items()))


def _weight(content: RecordDict, key: str) -> float:
    """A reply's aggregation weight (its example count) from its one MetricRecord."""
    return float(next(iter(content.metric_records.values()))[key])  # type: ignore[arg-type]


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


class TrainableOnly(Strategy):
    """Runs a strategy on the trainable parameters; the other state entries are averaged by example count.

    The inner strategy sees parameter-only arrays everywhere (its own copy of the global model, as kept by
    FedAvgM or the DP wrappers, and the replies), while clients still receive the full state. Replies are
    copied, not changed, so callers can still read them after aggregation.
    """

    def __init__(self, inner: Strategy, trainable: Collection[str], recorder: SelectionRecorder) -> None:
        self.inner = inner
        self.trainable = frozenset(trainable)
        self.recorder = recorder
        self.last_info: dict[str, Any] | None = None

    def summary(self) -> None:
        self.inner.summary()

    def state_dict(self) -> dict[str, Any]:
        """What the rule carries from round to round, for a checkpoint: FedAvgM's model and momentum,
        FoolsGold's update histories, the adaptive DP bound; empty for the stateless rules."""
        inner = self.inner
        if isinstance(inner, FedAvgM):
            momentum = inner.momentum_vector
            return {"current": None if inner.current_arrays is None else inner.current_arrays.to_torch_state_dict(),
                    "momentum": None if momentum is None else [torch.from_numpy(np.array(v)) for v in momentum]}
        if isinstance(inner, FoolsGold):
            return {"history": dict(inner.history)}
        if isinstance(inner, SeededAdaptiveClipping):
            return {"clipping_norm": float(inner.clipping_norm)}
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        inner = self.inner
        if isinstance(inner, FedAvgM):
            current, momentum = state["current"], state["momentum"]
            inner.current_arrays = None if current is None else ArrayRecord(current)
            inner.momentum_vector = None if momentum is None else [v.numpy() for v in momentum]
        elif isinstance(inner, FoolsGold):
            inner.history = {int(k): v for k, v in state["history"].items()}
        elif isinstance(inner, SeededAdaptiveClipping):
            inner.clipping_norm = float(state["clipping_norm"])

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
            key, record = _array_record(msg.content)
            dtypes = dtypes or {k: getattr(torch, v.dtype) for k, v in record.items()}  # "float32" -> torch.float32
            content = RecordDict({**dict(msg.content.items()), key: self._parameters(record)})
            copies[id(msg)] = Message(metadata=copy.copy(msg.metadata), content=content)
            rest.append({k: torch.from_numpy(v.numpy()) for k, v in record.items() if k not in self.trainable})
            weights.append(_weight(msg.content, WEIGHT_KEY))
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
        """Partitions aggregated, those the inner strategy left out, and whatever else it reports."""
        valid = [m for m in replies if id(m) in copies]
        info: dict[str, Any] = {"partitions": [partition_id(m) for m in valid]}
        if self.recorder.kept:
            kept = {id(content) for content in self.recorder.kept}
            info["excluded"] = [partition_id(m) for m in valid if id(copies[id(m)].content) not in kept]
        if isinstance(self.inner, ReportsAggregation):
            info.update(self.inner.last_info or {})
        return info

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


class SeededFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP, its noise seeded per round, its bound and noise reported.

    Flower draws the noise from numpy's global generator, which is seeded here before each aggregation.
    """

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int,
                 seed: int) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        self.seed = seed
        self.last_info: dict[str, Any] | None = None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        np.random.seed(round_seed(self.seed, server_round))
        arrays, metrics = super().aggregate_train(server_round, replies)
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        self.last_info = {"clip_bound": self.clipping_norm, "noise_std": std} if arrays is not None else None
        return arrays, metrics


class SeededAdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive-clipping DP (Andrew et al. 2019), seeded and reported as above.

    Flower clips with the current bound, then moves the bound towards the median update norm and draws
    the noise with the moved bound; both bounds are reported.
    """

    def _geometric_update(self, clipped_fraction: float) -> None:
        """Andrew et al.'s step, C <- C exp(-lr (unclipped share - target unclipped share)).

        Flower 1.41 feeds the *clipped* share into that formula, so the bound shrinks when most updates are
        clipped and collapses towards 0 (measured: 0.1 -> 0.014 in 20 rounds of the default run while every
        update, of norm 2-6, was clipped). Here it grows in that case, as the paper's rule does.
        """
        unclipped = 1.0 - clipped_fraction
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (unclipped - (1.0 - self.target_clipped_quantile)))

    def __init__(self, strategy: Strategy, noise_multiplier: float, num_sampled_clients: int, seed: int) -> None:
        super().__init__(strategy, noise_multiplier, num_sampled_clients)
        self.seed = seed
        self.last_info: dict[str, Any] | None = None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        np.random.seed(round_seed(self.seed, server_round))
        bound = self.clipping_norm
        arrays, metrics = super().aggregate_train(server_round, replies)
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        self.last_info = ({"clip_bound": bound, "next_clip_bound": self.clipping_norm, "noise_std": std}
                          if arrays is not None else None)
        return arrays, metrics


class RobustRule(FedAvg):
    """FedAvg's sampling, reply checks and metrics, with a rule of `fl_defense.aggregation` for the arrays.

    Like Flower's server-side DP wrappers it keeps the arrays it sent (configure_train) to form updates.
    """

    def __init__(self, seed: int, **fedavg: Any) -> None:
        super().__init__(**fedavg)
        self.seed = seed
        self.current_arrays = ArrayRecord()
        self.last_info: dict[str, Any] | None = None

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
        states = [_array_record(c)[1].to_torch_state_dict() for c in contents]
        weights = [_weight(c, self.weighted_by_key) for c in contents]
        partitions = [partition_id(m) for m in valid]
        generator = torch.Generator().manual_seed(round_seed(self.seed, server_round))
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


class Flame(RobustRule):
    """FLAME: majority cluster of update directions, median-norm clipping, noise (fl_defense.aggregation.flame)."""

    def __init__(self, noise_level: float, seed: int, **fedavg: Any) -> None:
        super().__init__(seed, **fedavg)
        self.noise_level = noise_level

    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return flame(global_state, states, self.noise_level, generator)


class FoolsGold(RobustRule):
    """FoolsGold: down-weights clients whose update histories look alike (fl_defense.aggregation.foolsgold)."""

    def __init__(self, confidence: float, seed: int, **fedavg: Any) -> None:
        super().__init__(seed, **fedavg)
        self.confidence = confidence
        self.history: dict[int, torch.Tensor] = {}

    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return foolsgold(global_state, states, partitions, self.history, self.confidence)


class RobustLearningRate(RobustRule):
    """RLR: negates the server learning rate where too few clients agree on the sign (fl_defense.aggregation.rlr)."""

    def __init__(self, threshold: int, seed: int, **fedavg: Any) -> None:
        super().__init__(seed, **fedavg)
        self.threshold = threshold

    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return rlr(global_state, states, weights, self.threshold)


class NormClip(RobustRule):
    """Norm clipping with weak DP (fl_defense.aggregation.normclip)."""

    def __init__(self, bound: float, noise_std: float, seed: int, **fedavg: Any) -> None:
        super().__init__(seed, **fedavg)
        self.bound = bound
        self.noise_std = noise_std

    def combine(self, global_state: State, states: list[State], partitions: list[int], weights: list[float],
                generator: torch.Generator) -> Aggregate:
        return normclip(global_state, states, self.bound, self.noise_std, generator)


def _dp_clip(cfg: Mapping[str, Any], kw: dict[str, Any]) -> Strategy:
    """Flower's server-side DP over FedAvg: fixed clipping at clip-norm, or adaptive clipping when it is 0."""
    n = cfg["clients-per-round"]
    if cfg["clip-norm"] > 0:
        return SeededFixedClipping(FedAvg(**kw), cfg["dp-noise-multiplier"], cfg["clip-norm"], n, cfg["seed"])
    return SeededAdaptiveClipping(FedAvg(**kw), cfg["dp-noise-multiplier"], n, cfg["seed"])


AGGREGATORS: dict[str, Callable[[Mapping[str, Any], dict[str, Any]], Strategy]] = {
    "fedavg": lambda cfg, kw: FedAvg(**kw),
    "fedavgm": lambda cfg, kw: FedAvgM(**kw),
    "fedmedian": lambda cfg, kw: FedMedian(**kw),
    "fedtrimmedavg": lambda cfg, kw: FedTrimmedAvg(**kw, beta=0.2),
    "krum": lambda cfg, kw: Krum(**kw, num_malicious_nodes=expected_malicious(cfg)),
    "multikrum": lambda cfg, kw: MultiKrum(
        **kw, num_malicious_nodes=expected_malicious(cfg),
        num_nodes_to_select=max(1, cfg["clients-per-round"] - expected_malicious(cfg))),
    "bulyan": lambda cfg, kw: Bulyan(**kw, num_malicious_nodes=expected_malicious(cfg)),
    "dp-clip": _dp_clip,
    "flame": lambda cfg, kw: Flame(cfg["flame-noise"], cfg["seed"], **kw),
    "foolsgold": lambda cfg, kw: FoolsGold(cfg["foolsgold-confidence"], cfg["seed"], **kw),
    "rlr": lambda cfg, kw: RobustLearningRate(
        cfg["rlr-threshold"] or default_threshold(expected_malicious(cfg)), cfg["seed"], **kw),
    "normclip": lambda cfg, kw: NormClip(cfg["clip-norm"], cfg["normclip-noise"], cfg["seed"], **kw),
}


def build_aggregator(cfg: Mapping[str, Any]) -> TrainableOnly:
    """The configured rule on the model's trainable parameters, sampling `clients-per-round` of `num-clients`."""
    recorder = SelectionRecorder()
    common = {
        "fraction_train": cfg["clients-per-round"] / cfg["num-clients"],
        "min_train_nodes": cfg["clients-per-round"],
        "min_available_nodes": cfg["num-clients"],
        "fraction_evaluate": 0.0,
        "weighted_by_key": WEIGHT_KEY,
        "train_metrics_aggr_fn": recorder,
    }
    return TrainableOnly(AGGREGATORS[cfg["aggregation"]](cfg, common), trainable_names(cfg), recorder)
