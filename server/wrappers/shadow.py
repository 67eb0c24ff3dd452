"""Shadow learning (Wang, Hayase, Fanti, Oh; TMLR 2023): `strategy-wrapper=shadow`.

Under continuous training the small errors of any filter add up and the model learns the backdoor
("backdoor leakage"). The paper's fix is two global models:
- the backbone, trained by every sampled client and aggregated by the configured `aggregation=` rule,
  exactly as without the defense;
- the shadow, trained by the same clients in the same rounds, but averaged (FedAvg) over the clients
  SPECTRE keeps (`fl_defense.server.wrappers.spectre`, scored on their backbone updates), and trained
  only until its clean-set accuracy stops improving. A frozen shadow costs the clients nothing; it is
  re-initialised and retrained when the backbone's clean-set accuracy moves away from its value at
  the freeze, the sign that the data the shadow learned from has changed.

The shadow, once it has trained, is the model the server deploys (what a run reports as BA/ASR).
Selected by `strategy-wrapper=shadow` (`defense=shadow` is an alias of it), beside any purifier.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fl_defense.aggregation import average_states
from fl_defense.config import expected_malicious
from fl_defense.errors import ConfigError
from fl_defense.protocol import SHADOW_ARRAYS
from fl_defense.registry import STRATEGY_WRAPPERS, between, non_negative, positive
from fl_defense.server.aggregation.base import WEIGHT_KEY, partition_id, trainable_names
from fl_defense.server.strategy import ServerContext, StrategyWrapper
from fl_defense.server.wrappers.spectre import filter_clients, head_keys, update_representations

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
    if msg.has_error() or SHADOW_ARRAYS not in msg.content.array_records:
        return msg
    content = RecordDict({k: v for k, v in msg.content.items() if k != SHADOW_ARRAYS})
    return Message(metadata=copy.copy(msg.metadata), content=content)


def _check_shadow(cfg: Mapping[str, Any]) -> None:
    """A shadow that would never train, or whose filter would drop every client, fails here."""
    if cfg["shadow-start"] > cfg["rounds"]:
        raise ConfigError(f"config key 'shadow-start': {cfg['shadow-start']} is after the last of {cfg['rounds']} "
                          f"rounds, so the shadow would never train; allowed: 1..{cfg['rounds']}")
    n, f, factor = cfg["clients-per-round"], expected_malicious(cfg), cfg["shadow-drop-factor"]
    drop = math.floor(factor * f + 1e-9)
    if drop >= n:
        raise ConfigError(f"config key 'shadow-drop-factor': the shadow drops floor({factor:g} x {f} expected "
                          f"malicious) = {drop} of the {n} clients per round, leaving none to train it; allowed: "
                          f"a factor below {n / f:g}, a smaller malicious-fraction, or more clients-per-round")


@STRATEGY_WRAPPERS.register("shadow", options=[
    positive("shadow-pca-dims", 16, "shadow: PCA dimensions of the clients' last-layer updates before SPECTRE's "
             "scoring (capped by the clients kept - 1)"),
    non_negative("shadow-que-alpha", 4.0, "shadow: QUE score exponent alpha (0: Mahalanobis distance)"),
    positive("shadow-drop-factor", 1.5, "shadow: each round drops the floor(factor x malicious share x clients) "
             "highest-scoring clients from the shadow"),
    positive("shadow-patience", 3, "shadow: training rounds without a clean-set accuracy gain above "
             "shadow-min-delta after which the shadow is frozen"),
    between("shadow-min-delta", 0.005, "shadow: clean-set accuracy gain that counts as an improvement", 0, 1),
    between("shadow-restart-shift", 0.05, "shadow: a frozen shadow is re-initialised and retrained once the "
            "backbone's clean-set accuracy moves by more than this from its value at the freeze", 0, 1, "()"),
    positive("shadow-start", 1, "shadow: round in which the shadow starts training, from the initial weights"),
], checks=[_check_shadow], summary="shadow learning (Wang et al. 2023): a second global model trained only on the "
                                   "clients SPECTRE keeps, early-stopped, and deployed")
class ShadowStrategy(StrategyWrapper):
    """Trains the shadow beside the backbone it wraps; see the module docstring.

    The train messages of a round in which the shadow trains carry it under `SHADOW_ARRAYS`; the (checked)
    replies bring it back trained the same way. What the round decided is its `last_info` (`shadow` in the row).
    """

    report_key = "shadow"
    serves = "shadow"
    trains = "backbone"

    def __init__(self, inner: StrategyWrapper, cfg: Mapping[str, Any], context: ServerContext) -> None:
        super().__init__(inner)
        self.initial, self.accuracy, self.truth = context.initial, context.clean_accuracy, context.truth
        trainable = trainable_names(cfg)
        self.head = head_keys([k for k in self.initial.keys() if k in trainable])
        self.malicious_share = expected_malicious(cfg) / cfg["clients-per-round"]
        self.drop_factor = cfg["shadow-drop-factor"]
        self.pca_dims = cfg["shadow-pca-dims"]
        self.que_alpha = cfg["shadow-que-alpha"]
        self.schedule = ShadowSchedule(cfg["shadow-start"], cfg["shadow-patience"], cfg["shadow-min-delta"],
                                       cfg["shadow-restart-shift"])
        self.shadow: ArrayRecord | None = None
        self.version = 0
        self._next = self.initial
        self._sent = self.initial
        self._state = WAITING

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

    def deployed(self) -> tuple[ArrayRecord, int] | None:
        """The shadow once it has trained (the model the server deploys); before that, none."""
        return None if self.shadow is None else (self.shadow, self.version)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent = arrays
        self._state = self.schedule.begin(server_round)
        if self._state in (STARTED, RESTARTED):
            self._next = self.initial
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self._state in TRAINS:
            for msg in messages:
                msg.content[SHADOW_ARRAYS] = self._next
        return messages

    def _read(self, msg: Message) -> _ShadowReply | None:
        if msg.has_error() or SHADOW_ARRAYS not in msg.content.array_records:
            return None
        backbone = next(r for k, r in msg.content.array_records.items() if k != SHADOW_ARRAYS)
        weight = float(next(iter(msg.content.metric_records.values()))[WEIGHT_KEY])  # type: ignore[arg-type]
        return _ShadowReply(partition_id(msg), _torch(backbone, self.head), _torch(msg.content[SHADOW_ARRAYS]), weight)

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
        malicious = set(self.truth(partitions, server_round)[0])
        return {"partitions": partitions, "scores": result.scores,
                "kept": [partitions[i] for i in result.kept], "dropped": [partitions[i] for i in result.dropped],
                "malicious_kept": [partitions[i] for i in result.kept if partitions[i] in malicious]}

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        read = [self._read(m) for m in replies] if self._state in TRAINS else []
        shadow_replies = [r for r in read if r is not None]
        arrays, metrics = self.inner.aggregate_train(server_round, [_without_shadow(m) for m in replies])
        record: dict[str, Any] = {"state": self._state}
        if shadow_replies:
            record.update(self._train_shadow(server_round, shadow_replies))
        backbone_acc = self.accuracy(arrays if arrays is not None else self._sent)
        shadow_acc = self.accuracy(self.shadow) if shadow_replies and self.shadow is not None else None
        record.update(backbone_clean_acc=backbone_acc, shadow_clean_acc=shadow_acc)
        event = self.schedule.end(backbone_acc, shadow_acc)
        if event is not None:
            record["event"] = event
        self.last_info = record
        return arrays, metrics
