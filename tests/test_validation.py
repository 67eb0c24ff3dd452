"""Hostile client replies: every malformed reply is rejected with its reason before any strategy sees it,
the round goes on with the valid ones (or is skipped), and the model never becomes NaN."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, Metadata, MetricRecord, RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg, FedMedian
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fl_defense.clients import client_app as real
from fl_defense.config import resolve
from fl_defense.data import dataset_spec
from fl_defense.models import build_model
from fl_defense.server.strategy import DefenseStrategy
from fl_defense.server.validation import Rejected, ReplySpec, accept_partitions, check_reply, validate

MODEL = build_model("cnn", dataset_spec("fashion-mnist"))
GLOBAL = ArrayRecord(MODEL.state_dict())
SENT_MODEL = {k: a.numpy() for k, a in GLOBAL.items()}
SENT = {"arrays": SENT_MODEL}  # what the round's train message held
TRAINABLE = [n for n, _ in MODEL.named_parameters()]
SIZES = {p: 100 for p in range(6)}
SPEC = ReplySpec.from_arrays(GLOBAL, TRAINABLE, SIZES, max_update_norm=1000.0)
FLOAT_KEY = TRAINABLE[0]


def _state(shift: float = 0.01) -> dict[str, np.ndarray]:
    return {k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" and k in TRAINABLE else v.copy()
            for k, v in SENT_MODEL.items()}


def _reply(node: int, partition: int, state: dict[str, Any] | None = None, examples: Any = 50,
           loss: Any = 0.5, metrics: dict[str, Any] | None = None, arrays: ArrayRecord | None = None,
           claims: int | None = None, client: dict[str, Any] | None = None) -> Message:
    record = arrays if arrays is not None else ArrayRecord({k: Array(v) for k, v in (state or _state()).items()})
    content = RecordDict({
        "arrays": record,
        "metrics": MetricRecord(metrics if metrics is not None else {"num-examples": examples, "train-loss": loss}),
        "client": ConfigRecord({"partition-id": partition if claims is None else claims, **(client or {})}),
    })
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, content=content)


def _error(node: int) -> Message:
    meta = Metadata(run_id=1, message_id=f"e{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN)
    return Message(metadata=meta, error=Error(code=0, reason="Traceback ...\nRuntimeError: CUDA out of memory"))


def _with(key: str, value: np.ndarray) -> dict[str, np.ndarray]:
    state = _state()
    state[key] = value
    return state


def _nan() -> dict[str, np.ndarray]:
    bad = _state()[FLOAT_KEY].copy()
    bad.flat[3] = np.nan
    return _with(FLOAT_KEY, bad)


def _liar() -> ArrayRecord:
    """An array whose header says the right shape but whose bytes are those of a huge array."""
    record = ArrayRecord({k: Array(v) for k, v in _state().items()})
    honest = record[FLOAT_KEY]
    big = Array(np.zeros(10_000_000, dtype=np.float32))
    record[FLOAT_KEY] = Array(dtype=honest.dtype, shape=honest.shape, stype=honest.stype, data=big.data)
    return record


def _missing() -> ArrayRecord:
    state = _state()
    del state[FLOAT_KEY]
    return ArrayRecord({k: Array(v) for k, v in state.items()})


def _extra() -> ArrayRecord:
    return ArrayRecord({**{k: Array(v) for k, v in _state().items()}, "backdoor.w": Array(np.zeros(3, np.float32))})


BAD_REPLIES = {
    "the client failed: RuntimeError: CUDA out of memory": lambda: _error(9),
    "has NaN or infinite values": lambda: _reply(9, 0, _nan()),
    "has shape": lambda: _reply(9, 0, _with(FLOAT_KEY, np.zeros((2, 2), np.float32))),
    "has dtype float64": lambda: _reply(9, 0, _with(FLOAT_KEY, SENT_MODEL[FLOAT_KEY].astype(np.float64))),
    "bytes, more than its shape": lambda: _reply(9, 0, arrays=_liar()),
    "missing": lambda: _reply(9, 0, arrays=_missing()),
    "extra ['backdoor.w']": lambda: _reply(9, 0, arrays=_extra()),
    "update norm": lambda: _reply(9, 0, _state(shift=10.0)),
    "num-examples -5 is not a positive": lambda: _reply(9, 0, examples=-5),
    "num-examples 0 is not a positive": lambda: _reply(9, 0, examples=0),
    "num-examples 2.5 is not a positive": lambda: _reply(9, 0, examples=2.5),
    "num-examples 1000000000 is more than the 100 samples": lambda: _reply(9, 0, examples=1_000_000_000),
    "must be numbers, not lists": lambda: _reply(9, 0, examples=[1, 2]),
    "train-loss nan is not finite": lambda: _reply(9, 0, loss=float("nan")),
    "metrics keys": lambda: _reply(9, 0, metrics={"num-examples": 5, "train-loss": 0.1, "accuracy": 1.0}),
    "claims partition 3": lambda: _reply(9, 0, claims=3),
    "client record keys ['attacked', 'malicious', 'partition-id']": lambda: _reply(
        9, 0, client={"malicious": False, "attacked": False}),
}


@pytest.mark.parametrize("reason", list(BAD_REPLIES))
def test_each_malformed_reply_is_rejected_with_its_reason(reason: str) -> None:
    with pytest.raises(Rejected, match=reason.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        check_reply(BAD_REPLIES[reason](), 0, SENT, SPEC)


def test_a_valid_reply_passes_and_a_reply_holds_exactly_the_models_it_was_sent() -> None:
    check_reply(_reply(9, 0), 0, SENT, SPEC)
    two = _reply(9, 0)
    two.content["shadow-arrays"] = ArrayRecord({k: Array(v) for k, v in _state().items()})
    with pytest.raises(Rejected, match=r"expected the models \['arrays'\]"):
        check_reply(two, 0, SENT, SPEC)
    with_shadow = {**SENT, "shadow-arrays": SENT_MODEL}
    check_reply(two, 0, with_shadow, SPEC)
    with pytest.raises(Rejected, match=r"expected the models \['arrays', 'shadow-arrays'\]"):
        check_reply(_reply(9, 0), 0, with_shadow, SPEC)
    two.content["shadow-arrays"] = ArrayRecord({k: Array(v) for k, v in _nan().items()})
    with pytest.raises(Rejected, match="shadow-arrays.*NaN"):
        check_reply(two, 0, with_shadow, SPEC)


def test_a_node_without_a_partition_of_the_run_is_rejected() -> None:
    """A node the server could not map to a partition (-1) has no size to check `num-examples` against."""
    with pytest.raises(Rejected, match="holds no partition of this run"):
        check_reply(_reply(9, -1), -1, SENT, SPEC)


def _strategy(inner: Any, min_replies: int = 1) -> DefenseStrategy:
    strategy = DefenseStrategy(inner, {n: n - 1 for n in range(1, 8)}, seed=0, spec=SPEC, min_replies=min_replies)
    strategy._sent = SENT
    return strategy


@pytest.mark.parametrize("inner", [FedAvg(), FedMedian()])
def test_the_round_goes_on_with_the_valid_replies(inner: Any) -> None:
    good = [_reply(1, 0), _reply(2, 1, _state(0.03))]
    bad = [_reply(3, 2, _nan()), _error(4), _reply(5, 4, examples=1_000_000_000),
           _reply(6, 5, _with(FLOAT_KEY, np.zeros((2, 2), np.float32)))]
    strategy = _strategy(inner)
    arrays, _ = strategy.aggregate_train(1, [*bad, *good])
    assert arrays is not None
    expected = FedAvg().aggregate_train(1, [_reply(1, 0), _reply(2, 1, _state(0.03))])[0] if isinstance(
        inner, FedAvg) else None
    for key, a in arrays.items():
        assert np.isfinite(a.numpy()).all()
        if expected is not None:
            assert np.allclose(a.numpy(), expected[key].numpy())
    info = strategy.rounds[1]
    assert sorted(r["partition"] for r in info.rejected) == [2, 3, 4, 5]
    assert info.failures == 1 and not info.skipped


def _answer(node: int, partition: Any) -> Message:
    meta = Metadata(run_id=1, message_id=f"q{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id="0", created_at=time.time(), ttl=60.0, message_type=MessageType.QUERY)
    return Message(metadata=meta, content=RecordDict({"client": ConfigRecord({"partition-id": partition})}))


def test_start_up_partition_claims_out_of_range_shared_or_malformed_are_refused() -> None:
    answers = [_answer(10, 0), _answer(11, 1), _answer(12, 5), _answer(13, -1), _answer(14, 2), _answer(15, 2),
               _answer(16, 1.5), _answer(17, True), _error(18)]
    accepted, refused = accept_partitions(answers, num_clients=5)
    assert accepted == {10: 0, 11: 1}
    reasons = {r["node"]: r["reason"] for r in refused}
    assert set(reasons) == {12, 13, 14, 15, 16, 17, 18}
    assert "outside [0, 5)" in reasons[12] and "outside [0, 5)" in reasons[13]
    assert reasons[14] == reasons[15] == "nodes [14, 15] all claim partition 2"
    assert "not a whole number" in reasons[16] and "not a whole number" in reasons[17]
    assert "CUDA out of memory" in reasons[18]


def test_too_few_valid_replies_skip_the_round() -> None:
    strategy = _strategy(FedAvg(), min_replies=2)
    arrays, metrics = strategy.aggregate_train(3, [_reply(1, 0), _reply(2, 1, _nan()), _error(3)])
    assert arrays is None and metrics is None  # Flower keeps the global model
    assert strategy.rounds[3].skipped and len(strategy.rounds[3].rejected) == 2


def test_a_run_whose_every_round_was_skipped_says_so_and_exits_1(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from fl_defense.server.progress import Progress
    from fl_defense.simulations.cli import _status

    row = {"ba": 0.1, "asr": 0.0, "train_loss": None, "skipped": True}
    results = {"rounds": [{"round": 0, "ba": 0.1, "asr": 0.0}, {**row, "round": 1}, {**row, "round": 2}]}
    Progress(2, 0).finish(results, tmp_path)
    assert "every round was skipped" in capsys.readouterr().err and _status(results) == 1
    results["rounds"][1]["skipped"] = False
    Progress(2, 0).finish(results, tmp_path)
    assert "skipped" not in capsys.readouterr().err and _status(results) == 0


def _should_pass(kind: str, x: float, state: dict[str, np.ndarray]) -> bool:
    """The verdict a reply of this kind must get: computed here from the rules, not from the validator."""
    if kind in ("nan", "inf", "shape", "dtype", "error", "keys"):
        return False
    if kind == "examples":
        return bool(np.isfinite(x)) and int(x) == x and 1 <= x <= 100
    if kind == "loss":
        return bool(np.isfinite(x))
    update = np.sqrt(sum(float(np.sum((state[k].astype(np.float64) - SENT_MODEL[k]) ** 2)) for k in TRAINABLE))
    return bool(np.isfinite(state[FLOAT_KEY]).all()) and update <= 1000.0


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@example([("examples", 1.5)])  # a fractional count is sent as it is, and refused
@given(st.lists(st.tuples(
    st.sampled_from(["ok", "nan", "inf", "shape", "dtype", "scale", "examples", "loss", "error", "keys"]),
    st.one_of(st.floats(-1e12, 1e12), st.sampled_from([float("nan"), float("inf"), -float("inf")]))),
    min_size=1, max_size=6))
def test_no_reply_however_malformed_crashes_the_server_or_makes_the_model_nan(
        replies: list[tuple[str, float]]) -> None:
    msgs, expected_valid = [], set()
    for node, (kind, x) in enumerate(replies, start=1):
        state = _state()
        if kind == "nan":
            state[FLOAT_KEY] = np.full_like(state[FLOAT_KEY], np.nan)
        elif kind == "inf":
            state[FLOAT_KEY] = state[FLOAT_KEY] + np.float32(np.inf)
        elif kind == "shape":
            state[FLOAT_KEY] = np.zeros(7, np.float32)
        elif kind == "dtype":
            state[FLOAT_KEY] = state[FLOAT_KEY].astype(np.float16)
        elif kind == "scale":
            state[FLOAT_KEY] = (state[FLOAT_KEY] * np.float32(x if np.isfinite(x) else 1.0)).astype(np.float32)
        if kind == "error":
            msgs.append(_error(node))
        elif kind == "keys":
            msgs.append(_reply(node, node - 1, arrays=_extra()))
        elif kind == "examples":
            msgs.append(_reply(node, node - 1, state, examples=int(x) if np.isfinite(x) and int(x) == x else x))
        elif kind == "loss":
            msgs.append(_reply(node, node - 1, state, loss=x))
        else:
            msgs.append(_reply(node, node - 1, state))
        if _should_pass(kind, x, state):
            expected_valid.add(node)
    strategy = _strategy(FedAvg())
    arrays, _ = strategy.aggregate_train(1, msgs)
    valid, rejected = validate(msgs, strategy._partition, SENT, SPEC)
    assert {m.metadata.src_node_id for m in valid} == expected_valid
    assert {r["node"] for r in rejected} == set(range(1, len(msgs) + 1)) - expected_valid
    if arrays is not None:
        assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
    else:
        assert not valid


# A ClientApp that misbehaves on purpose, for the end-to-end fault-injection run. Ray ships it to its actors
# by value, since this test module is not importable there.

faulty = ClientApp()


@faulty.query()
def _query(msg: Message, context: Context) -> Message:
    """Partitions 4-8 lie at start-up: out of range, a failed query, another node's partition, not a number."""
    pid = int(context.node_config["partition-id"])
    if pid == 5:
        raise RuntimeError("injected query crash")
    reply = real.query(msg, context)
    claims = {4: 999, 6: 7, 8: "seven"}
    if pid in claims:
        reply.content["client"]["partition-id"] = claims[pid]
    return reply


@faulty.train()
def _train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if pid == 1:
        raise RuntimeError("injected crash")
    reply = real.train(msg, context)
    arrays = reply.content["arrays"]
    key = next(k for k in arrays.keys() if k.endswith("weight"))
    if pid == 0:
        value = arrays[key].numpy().copy()
        value.flat[0] = np.nan
        arrays[key] = Array(value)
    elif pid == 2:
        arrays[key] = Array(np.zeros(5, dtype=np.float32))
    elif pid in (3, 4):  # 4: the probe of an unknown partition, a zero model weighted 1e9
        reply.content["metrics"]["num-examples"] = 1_000_000_000
    if pid == 4:
        arrays[key] = Array(np.zeros_like(arrays[key].numpy()))
    return reply


@pytest.mark.simulation
def test_fault_injection_through_flower_and_ray(tmp_path: Path) -> None:
    """Of 11 clients, one returns NaN, one raises, one a wrong shape, one 1e9 examples, and five lie about their
    partition at start-up (with the honest holder of the partition one of them claims): the run completes on the
    other two, the liars are never sampled, the model stays finite, and results.json counts every rejection and
    refusal with its reason."""
    import ray.cloudpickle
    from fl_defense.simulations.runner import run_experiment

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = resolve({"num-clients": 11, "clients-per-round": 11, "train-fraction": 0.05, "rounds": 2,
                   "malicious-fraction": 0.0, "attack": "none", "device": "cpu", "min-replies": 2,
                   "out-dir": str(tmp_path)})
    results = run_experiment(cfg, tmp_path, client_app=faulty)
    rounds = results["rounds"][1:]
    assert len(rounds) == 2
    refused = sorted(r["reason"] for r in results["refused_nodes"])
    assert len(refused) == 5, refused
    assert sum("partition 999, outside [0, 11)" in r for r in refused) == 1
    assert sum("injected query crash" in r for r in refused) == 1
    assert sum("all claim partition 7" in r for r in refused) == 2
    assert sum("'seven', not a whole number" in r for r in refused) == 1
    for row in rounds:
        assert row["sampled"] == [0, 1, 2, 3, 9, 10]
        reasons = {r["partition"]: r["reason"] for r in row["rejected"]}
        assert set(reasons) == {0, 1, 2, 3} and not row["skipped"]
        assert "NaN" in reasons[0] and "injected crash" in reasons[1]
        assert "shape" in reasons[2] and "1000000000" in reasons[3]
        assert row["failures"] == 1
    assert results["rounds"][-1]["ba"] > results["rounds"][0]["ba"]  # the two valid clients trained it
    import torch

    final = torch.load(tmp_path / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v.float()).all() for v in final.values())


slow = ClientApp()  # partition 1 answers a round only after the round's timeout
slow.query()(real.query)


@slow.train()
def _slow_train(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) == 1:
        time.sleep(15)  # past the test's round-timeout of 8 s
    return real.train(msg, context)


@pytest.mark.simulation
def test_a_silent_client_costs_one_round_timeout_and_a_run_can_start_from_a_saved_model(tmp_path: Path) -> None:
    """The run starts from a saved model (`init-from`: its round 0 is that model's BA, not the fresh model's) and
    its round goes on without the client that answers after `round-timeout`."""
    import ray.cloudpickle
    import torch
    from fl_defense.data import data_for
    from fl_defense.metrics import Evaluator
    from fl_defense.simulations.runner import run_experiment

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    saved = build_model("cnn", dataset_spec("fashion-mnist"))
    with torch.no_grad():
        saved.head.bias[3] += 5.0  # a model that mostly answers "Dress"
    torch.save(saved.state_dict(), tmp_path / "init.pt")
    cfg = resolve({"num-clients": 2, "clients-per-round": 2, "train-fraction": 0.05, "rounds": 1, "attack": "none",
                   "malicious-fraction": 0.0, "device": "cpu", "out-dir": str(tmp_path / "run"),
                   "round-timeout": 8.0, "init-from": str(tmp_path / "init.pt")})
    evaluate = Evaluator(cfg, data_for(cfg), torch.device("cpu"))
    torch.manual_seed(cfg["seed"])
    fresh = build_model("cnn", dataset_spec("fashion-mnist"))
    results = run_experiment(cfg, tmp_path / "run", client_app=slow)
    assert results["rounds"][0]["ba"] == pytest.approx(evaluate(saved.eval())[0], abs=1e-6)
    assert evaluate(saved) != evaluate(fresh.eval())
    assert results["rounds"][1]["sampled"] == [0] and not results["rounds"][1]["skipped"]
