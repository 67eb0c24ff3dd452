"""Checks on every client reply before any strategy sees it: in federated learning the clients are the adversary.

A reply is rejected, with one line saying why, if the client raised; if it does not hold exactly the
models it was sent (the global model, and the shadow model when one was sent), one metrics record of the
protocol's keys and, if any, a client record of the protocol's keys (`fl_defense.protocol`); if a model's
keys, shapes or dtypes differ from the one sent, or its serialised arrays are larger than those shapes need
(checked before anything is deserialised); if a value is NaN or infinite; if its update of the trainable
parameters has an L2 norm above `reply-max-norm`; if `num-examples` is not a positive whole number at most
the client's partition size; or if it claims another client's partition.
Before the first round every node says which partition it holds (`accept_partitions`): a node whose answer
failed, is not a whole number in [0, num-clients), or names a partition another node also claims is refused
for the whole run (never sampled), so a made-up partition cannot pass the size check above.
Flower's own strategies raise on inconsistent replies and FedMedian/FedTrimmedAvg consume them, so these
checks run first and the strategies only ever see replies that passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fl_defense.protocol import ARRAYS, CLIENT, METRIC_KEYS, NUM_EXAMPLES, PARTITION_ID, TRAIN_LOSS

NPY_HEADER_MAX = 4096  # bytes a .npy header may take beyond the data itself
Sent = Mapping[str, Mapping[str, np.ndarray]]  # what a round's train message held: record key -> arrays


@dataclass(frozen=True)
class ReplySpec:
    """What a valid reply looks like for this run's model and split."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, np.dtype]
    trainable: frozenset[str]
    partition_sizes: Mapping[int, int]
    max_update_norm: float

    @classmethod
    def from_arrays(cls, arrays: ArrayRecord, trainable: Iterable[str], partition_sizes: Mapping[int, int],
                    max_update_norm: float) -> ReplySpec:
        shapes = {k: tuple(a.shape) for k, a in arrays.items()}
        dtypes = {k: np.dtype(a.dtype) for k, a in arrays.items()}
        return cls(shapes, dtypes, frozenset(trainable), dict(partition_sizes), max_update_norm)


class Rejected(Exception):
    """A reply that fails a check; the message is the reason, one line."""


def _array(key: str, array: Array, spec: ReplySpec, what: str) -> np.ndarray:
    """Deserialise one array after checking what it claims, then check what it is."""
    shape, dtype = spec.shapes[key], spec.dtypes[key]
    if tuple(array.shape) != shape:
        raise Rejected(f"{what} array '{key}' has shape {tuple(array.shape)}, expected {shape}")
    if str(array.dtype) != str(dtype):
        raise Rejected(f"{what} array '{key}' has dtype {array.dtype}, expected {dtype}")
    limit = math.prod(shape) * dtype.itemsize + NPY_HEADER_MAX
    if len(array.data) > limit:
        raise Rejected(f"{what} array '{key}' is {len(array.data)} bytes, more than its shape {shape} needs ({limit})")
    try:
        value = array.numpy()
    except Exception as exc:  # noqa: BLE001 - np.load raises many types for malformed bytes
        raise Rejected(f"{what} array '{key}' cannot be read: {type(exc).__name__}") from None
    if value.shape != shape or value.dtype != dtype:
        raise Rejected(f"{what} array '{key}' holds {value.dtype} {value.shape}, not the declared {dtype} {shape}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise Rejected(f"{what} array '{key}' has NaN or infinite values")
    return value


def check_model(record: ArrayRecord, sent: Mapping[str, np.ndarray], spec: ReplySpec, what: str = "model") -> None:
    """Keys, shapes, dtypes, sizes, finiteness and update norm of a returned model against the one sent."""
    keys = set(record.keys())
    missing, extra = set(spec.shapes) - keys, keys - set(spec.shapes)
    if missing or extra:
        parts = ([f"missing {sorted(missing)[:3]}"] if missing else []) + ([f"extra {sorted(extra)[:3]}"] if extra else [])
        raise Rejected(f"{what} keys differ from the global model's: {', '.join(parts)}")
    squared = 0.0
    for key in spec.shapes:
        value = _array(key, record[key], spec, what)
        if key in spec.trainable:
            squared += float(np.sum((value.astype(np.float64) - sent[key].astype(np.float64)) ** 2))
    norm = math.sqrt(squared)
    if not math.isfinite(norm) or (spec.max_update_norm > 0 and norm > spec.max_update_norm):
        raise Rejected(f"{what} update norm {norm:.4g} is above reply-max-norm {spec.max_update_norm:g}")


def check_reply(msg: Message, partition: int, sent: Sent, spec: ReplySpec) -> None:
    """Raise `Rejected` with the reason if the reply of the node holding `partition` is not valid."""
    if msg.has_error():
        lines = (msg.error.reason or "").strip().splitlines()
        raise Rejected(f"the client failed: {lines[-1][:200] if lines else 'no reason given'}")
    content = msg.content
    arrays = dict(content.array_records)
    if set(arrays) != set(sent):
        raise Rejected(f"expected the models {sorted(sent)} (ArrayRecords), got {sorted(arrays)}")
    metrics = dict(content.metric_records)
    if len(metrics) != 1:
        raise Rejected(f"expected one MetricRecord, got {len(metrics)}")
    record = next(iter(metrics.values()))
    if set(record.keys()) != METRIC_KEYS:
        raise Rejected(f"metrics keys {sorted(record.keys())} are not {sorted(METRIC_KEYS)}")
    examples, loss = record[NUM_EXAMPLES], record[TRAIN_LOSS]
    if isinstance(examples, list) or isinstance(loss, list):
        raise Rejected("num-examples and train-loss must be numbers, not lists")
    size = spec.partition_sizes.get(partition)
    if size is None:
        raise Rejected(f"the node holds no partition of this run (partition {partition})")
    if not math.isfinite(examples) or examples <= 0 or examples != int(examples):
        raise Rejected(f"num-examples {examples!r} is not a positive whole number")
    if examples > size:
        raise Rejected(f"num-examples {int(examples)} is more than the {size} samples of partition {partition}")
    if not math.isfinite(loss):
        raise Rejected(f"train-loss {loss!r} is not finite")
    client = content.config_records.get(CLIENT)
    if client is not None and set(client.keys()) != {PARTITION_ID}:
        raise Rejected(f"client record keys {sorted(client.keys())} are not ['{PARTITION_ID}']")
    if client is not None and client[PARTITION_ID] != partition:
        raise Rejected(f"claims partition {client[PARTITION_ID]!r} but the node holds partition {partition}")
    for key in sorted(arrays, key=lambda k: k != ARRAYS):  # the global model first
        check_model(arrays[key], sent[key], spec, what="model" if key == ARRAYS else key)


def _claim(reply: Message) -> int:
    """The partition a query reply names, or `Rejected` with why it names none."""
    if reply.has_error():
        lines = (reply.error.reason or "").strip().splitlines()
        raise Rejected(f"its partition query failed: {lines[-1][:200] if lines else 'no reason given'}")
    client = reply.content.config_records.get(CLIENT)
    value = None if client is None else client.get(PARTITION_ID)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected(f"its partition query answered {value!r}, not a whole number")
    return value


def accept_partitions(replies: Iterable[Message], num_clients: int) -> tuple[dict[int, int], list[dict[str, object]]]:
    """Node id -> partition for the nodes whose start-up answer holds, and the refused ones with the reason.

    Two nodes naming one partition are both refused: the server cannot tell which of them lies."""
    claims: dict[int, int] = {}
    refused: list[dict[str, object]] = []
    for reply in replies:
        node = reply.metadata.src_node_id
        try:
            pid = _claim(reply)
            if not 0 <= pid < num_clients:
                raise Rejected(f"it claims partition {pid}, outside [0, {num_clients})")
        except Rejected as exc:
            refused.append({"node": node, "reason": str(exc)})
            continue
        claims[node] = pid
    holders: dict[int, list[int]] = {}
    for node, pid in claims.items():
        holders.setdefault(pid, []).append(node)
    for pid, nodes in sorted(holders.items()):
        if len(nodes) > 1:
            refused += [{"node": n, "reason": f"nodes {sorted(nodes)} all claim partition {pid}"} for n in sorted(nodes)]
    accepted = {n: pid for pid, nodes in holders.items() if len(nodes) == 1 for n in nodes}
    return accepted, refused


def validate(replies: Iterable[Message], partition_of: Callable[[Message], int], sent: Sent,
             spec: ReplySpec) -> tuple[list[Message], list[dict[str, object]]]:
    """The replies that pass, and for each rejected one its partition and reason."""
    valid, rejected = [], []
    for msg in replies:
        pid = partition_of(msg)
        try:
            check_reply(msg, pid, sent, spec)
        except Rejected as exc:
            rejected.append({"partition": pid, "node": msg.metadata.src_node_id, "reason": str(exc)})
            continue
        valid.append(msg)
    return valid, rejected
