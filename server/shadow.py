"""Shadow learning (Wang, Hayase, Fanti, Oh; TMLR 2023): `defense=shadow`.

Under continuous training the small errors of any filter add up and the model learns the backdoor
("backdoor leakage"). The paper's fix is two global models:
- the backbone, trained by every sampled client and aggregated by the configured `aggregation=` rule,
  exactly as without the defense;
- the shadow, trained by the same clients in the same rounds, but averaged (FedAvg) over the clients
  SPECTRE keeps (`fl_defense.aggregation.spectre`, scored on their backbone updates), and trained
  only until its clean-set accuracy stops improving. A frozen shadow costs the clients nothing; it is
  re-initialised and retrained when the backbone's clean-set accuracy moves away from its value at
  the freeze, the sign that the data the shadow learned from has changed.

The shadow, once it has trained, is the model the server deploys (what a run reports as BA/ASR).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from clients.client_app import SHADOW_ARRAYS_KEY
from fl_defense.aggregation import average_states
from fl_defense.aggregation.spectre import filter_clients, head_keys, update_representations
from fl_defense.config import expected_malicious
from server.aggregation import WEIGHT_KEY, partition_id, trainable_names
from server.strategy import DefenseStrategy
from server.validation import Rejected, check_model

WAITING, STARTED, TRAINING, FROZEN, RESTARTED = "waiting", "started", "training", "frozen", "restarted"
TRAINS = (STARTED, TRAINING, RESTARTED)


@dataclass
class ShadowSchedule:
    """When the shadow trains: from `start`, until `patience` training rounds in a row gain no more than
    `min_delta` clean-set accuracy over its best; then frozen until the backbone's clean-set accuracy is more
    than `restart_shift` away from its value at the freeze, when the shadow starts over."""

    start: int
    patience: int
    min_delta: float
    restart_shift: float
    phase: str = WAITING
    best: float = -math.inf
    stale: int = 0
    frozen_backbone: float = 0.0
    restart_due: bool = False

    def begin(self, server_round: int) -> str:
        """What the shadow does this round: waiting, started or restarted (from the initial weights), training
        (on from the last round), or frozen."""
        if self.phase == WAITING and server_round >= self.start:
            self.phase = TRAINING
            return STARTED
        if self.phase == FROZEN and self.restart_due:
            self.phase, self.best, self.stale, self.restart_due = TRAINING, -math.inf, 0, False
            return RESTARTED
        return self.phase

    def end(self, backbone_acc: float, shadow_acc: float | None) -> str | None:
        """Take the round's clean-set accuracies (the shadow's: None if it did not change); returns "froze" or
        "restart-due" when the round decided that."""
        if self.phase == TRAINING and shadow_acc is not None:
            if shadow_acc > self.best + self.min_delta:
                self.best, self.stale = shadow_acc, 0
            else:
                self.stale += 1
            if self.stale >= self.patience:
                self.phase, self.frozen_backbone = FROZEN, backbone_acc
                return "froze"
        elif self.phase == FROZEN and not self.restart_due:
            self.restart_due = abs(backbone_acc - self.frozen_backbone) > self.restart_shift
            return "restart-due" if self.restart_due else None
        return None


@dataclass
class _ShadowReply:
    """What the shadow needs of one client's reply, read before the backbone's rule consumes the replies."""

    partition: int
    backbone: dict[str, torch.Tensor]
    shadow: dict[str, torch.Tensor]
    weight: float


def _torch(record: ArrayRecord, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    names = list(record.keys()) if keys is None else keys
    return {k: torch.from_numpy(record[k].numpy()) for k in names}


def _without_shadow(msg: Message) -> Message:
    """The reply as the backbone's rule expects it: exactly one ArrayRecord."""
    if msg.has_error() or SHADOW_ARRAYS_KEY not in msg.content.array_records:
        return msg
    content = RecordDict({k: v for k, v in msg.content.items() if k != SHADOW_ARRAYS_KEY})
    return Message(metadata=copy.copy(msg.metadata), content=content)


class ShadowStrategy(Strategy):
    """Wraps the backbone's `DefenseStrategy` and trains the shadow beside it; see the module docstring.

    `accuracy` is the model's accuracy on the server's clean set. The train messages of a round in which the
    shadow trains carry it under `SHADOW_ARRAYS_KEY`; the replies bring it back trained the same way.
    """

    def __init__(self, backbone: DefenseStrategy, initial: ArrayRecord, cfg: Mapping[str, Any],
                 accuracy: Callable[[ArrayRecord], float]) -> None:
        self.backbone = backbone
        self.initial = initial
        self.accuracy = accuracy
        trainable = trainable_names(cfg)
        self.head = head_keys([k for k in initial.keys() if k in trainable])
        self.malicious_share = expected_malicious(cfg) / cfg["clients-per-round"]
        self.drop_factor = cfg["shadow-drop-factor"]
        self.pca_dims = cfg["shadow-pca-dims"]
        self.que_alpha = cfg["shadow-que-alpha"]
        self.schedule = ShadowSchedule(cfg["shadow-start"], cfg["shadow-patience"], cfg["shadow-min-delta"],
                                       cfg["shadow-restart-shift"])
        self.shadow: ArrayRecord | None = None
        self.version = 0
        self.records: dict[int, dict[str, Any]] = {}
        self._next = initial
        self._sent = initial
        self._state = WAITING
        self._started = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The shadow, the model it trains next, and its schedule, for a checkpoint."""
        sched = self.schedule
        return {"shadow": None if self.shadow is None else self.shadow.to_torch_state_dict(),
                "next": self._next.to_torch_state_dict(), "version": self.version,
                "schedule": {"phase": sched.phase, "best": sched.best, "stale": sched.stale,
                             "frozen_backbone": sched.frozen_backbone, "restart_due": sched.restart_due}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shadow = None if state["shadow"] is None else ArrayRecord(state["shadow"])
        self._next = ArrayRecord(state["next"])
        self.version = int(state["version"])
        for key, value in state["schedule"].items():
            setattr(self.schedule, key, value)

    def deployed(self, backbone: ArrayRecord) -> ArrayRecord:
        """The model the server deploys: the shadow once it has trained, the backbone before."""
        return backbone if self.shadow is None else self.shadow

    def summary(self) -> None:
        self.backbone.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._started = time.perf_counter()
        self._sent = arrays
        self._state = self.schedule.begin(server_round)
        if self._state in (STARTED, RESTARTED):
            self._next = self.initial
        messages = list(self.backbone.configure_train(server_round, arrays, config, grid))
        if self._state in TRAINS:
            for msg in messages:
                msg.content[SHADOW_ARRAYS_KEY] = self._next
        return messages

    def _valid_shadow_replies(self, replies: list[Message]) -> tuple[list[_ShadowReply], list[dict[str, Any]]]:
        """The shadow part of the replies that pass the backbone's checks, whose shadow model passes them too,
        and the partitions whose shadow model did not, with the reason."""
        valid, _ = self.backbone.screen(replies)
        spec = self.backbone.spec
        sent = {k: a.numpy() for k, a in self._next.items()} if spec is not None else {}
        out, rejected = [], []
        for msg in valid:
            if spec is not None and SHADOW_ARRAYS_KEY in msg.content.array_records:
                try:
                    check_model(msg.content[SHADOW_ARRAYS_KEY], sent, spec, what="shadow model")
                except Rejected as exc:
                    rejected.append({"partition": partition_id(msg), "reason": str(exc)})
                    continue
            reply = self._read(msg)
            if reply is not None:
                out.append(reply)
        return out, rejected

    def _read(self, msg: Message) -> _ShadowReply | None:
        if msg.has_error() or SHADOW_ARRAYS_KEY not in msg.content.array_records:
            return None
        backbone = next(r for k, r in msg.content.array_records.items() if k != SHADOW_ARRAYS_KEY)
        weight = float(next(iter(msg.content.metric_records.values()))[WEIGHT_KEY])  # type: ignore[arg-type]
        return _ShadowReply(partition_id(msg), _torch(backbone, self.head),
                            _torch(msg.content[SHADOW_ARRAYS_KEY]), weight)

    def _train_shadow(self, server_round: int, replies: list[_ShadowReply]) -> dict[str, Any]:
        """Score the clients' backbone updates, FedAvg the shadow over those kept; what was decided, for the report."""
        replies = sorted(replies, key=lambda r: r.partition)
        sent = _torch(self._sent, self.head)
        reps = update_representations(sent, [r.backbone for r in replies], self.head)
        result = filter_clients(reps, self.malicious_share, self.drop_factor, self.pca_dims, self.que_alpha)
        kept = [replies[i] for i in result.kept]
        self.shadow = self._next = ArrayRecord(average_states([r.shadow for r in kept], [r.weight for r in kept]))
        self.version += 1
        partitions = [r.partition for r in replies]
        malicious = set(self.backbone.rounds[server_round].malicious) if server_round in self.backbone.rounds else set()
        return {"partitions": partitions, "scores": result.scores,
                "kept": [partitions[i] for i in result.kept], "dropped": [partitions[i] for i in result.dropped],
                "malicious_kept": [partitions[i] for i in result.kept if partitions[i] in malicious]}

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        shadow_replies, shadow_rejected = self._valid_shadow_replies(replies) if self._state in TRAINS else ([], [])
        arrays, metrics = self.backbone.aggregate_train(server_round, [_without_shadow(m) for m in replies])
        record: dict[str, Any] = {"state": self._state}
        if shadow_rejected:
            record["rejected"] = shadow_rejected
        if shadow_replies:
            record.update(self._train_shadow(server_round, shadow_replies))
        backbone_acc = self.accuracy(arrays if arrays is not None else self._sent)
        shadow_acc = self.accuracy(self.shadow) if shadow_replies and self.shadow is not None else None
        record.update(backbone_clean_acc=backbone_acc, shadow_clean_acc=shadow_acc)
        event = self.schedule.end(backbone_acc, shadow_acc)
        if event is not None:
            record["event"] = event
        seconds = time.perf_counter() - self._started
        if server_round in self.backbone.rounds:
            self.backbone.rounds[server_round].seconds = seconds
        self.records[server_round] = record
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.backbone.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.backbone.aggregate_evaluate(server_round, replies)
