"""Checkpoints and `fl-defense run --resume`: a run killed with SIGKILL and resumed gives the numbers of an
uninterrupted run; what the rules, the defense and the clients carry between rounds survives; bad
checkpoints get one clear error."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from clients.client_app import load_memory, save_memory
from fl_defense.attacks import Trigger
from fl_defense.config import ConfigError, resolve
from fl_defense.data import SPECS
from fl_defense.defense import DefenseMemory
from fl_defense.models import build_model
from server import checkpoint
from server.aggregation import build_aggregator
from simulations.cli import main
from simulations.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_bad_checkpoints_get_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="no such run folder"):
        checkpoint.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="did not finish a round"):
        checkpoint.load(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    path = tmp_path / "checkpoints" / checkpoint.NAME
    path.write_bytes(os.urandom(300))
    with pytest.raises(ConfigError, match="cannot be read as a weights-only torch file"):
        checkpoint.load(tmp_path)
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ConfigError, match="is not an fl-defense resume checkpoint"):
        checkpoint.load(tmp_path)
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not an fl-defense resume checkpoint" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path), "--set", "rounds=3"]) == 2
    assert "drop --config, --set and --out" in capsys.readouterr().err


def test_random_states_round_trip() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    checkpoint.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_defense_memory_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    model = build_model("cnn", SPECS["fashion-mnist"])
    reference = build_model("cnn", SPECS["fashion-mnist"])
    triggers = [Trigger(torch.rand(1, 28, 28), torch.rand(1, 28, 28), 1.0) for _ in range(2)]
    memory = DefenseMemory(reference, {3: (triggers[0], 2), 8: (triggers[1], 4)}, 4)
    checkpoint.save(tmp_path / "m.pt", {"defense": memory.state_dict()})
    back = DefenseMemory.from_state(torch.load(tmp_path / "m.pt", weights_only=True)["defense"], model)
    assert back.calls == 4 and list(back.found) == [3, 8]
    for label, (t, call) in memory.found.items():
        assert back.found[label][1] == call and torch.equal(back.found[label][0].mask, t.mask)
        assert torch.equal(back.found[label][0].pattern, t.pattern)
    assert back.reference is not None
    assert all(torch.equal(a, b) for a, b in zip(back.reference.state_dict().values(),
                                                 reference.state_dict().values(), strict=True))
    empty = DefenseMemory.from_state(DefenseMemory().state_dict(), model)
    assert empty.reference is None and empty.found == {} and empty.calls == 0


def test_defense_memory_reads_a_single_trigger_checkpoint() -> None:
    """Checkpoints written before the memory kept every flagged label resume with their one label."""
    t = Trigger(torch.rand(1, 28, 28), torch.rand(1, 28, 28), 1.0)
    old = {"reference": None, "trigger": {"pattern": t.pattern, "mask": t.mask, "alpha": 1.0}, "trigger_label": 3,
           "trigger_call": 2, "calls": 5}
    back = DefenseMemory.from_state(old, build_model("cnn", SPECS["fashion-mnist"]))
    assert back.calls == 5 and list(back.found) == [3] and back.found[3][1] == 2
    assert torch.equal(back.found[3][0].mask, t.mask)
    none = DefenseMemory.from_state({**old, "trigger": None, "trigger_label": None, "trigger_call": None},
                                    build_model("cnn", SPECS["fashion-mnist"]))
    assert none.found == {}


@pytest.mark.parametrize("rule", ["foolsgold", "fedavgm", "dp-clip", "fedavg"])
def test_rule_state_round_trips(rule: str, tmp_path: Path) -> None:
    cfg = resolve({"aggregation": rule})
    agg = build_aggregator(cfg)
    inner = agg.inner
    if rule == "foolsgold":
        inner.history = {3: torch.rand(5), 7: torch.rand(5)}
    elif rule == "fedavgm":
        from flwr.app import ArrayRecord

        inner.current_arrays = ArrayRecord({"w": torch.rand(4)})
        inner.momentum_vector = [np.random.rand(4).astype(np.float32)]
    elif rule == "dp-clip":
        inner.clipping_norm = 1.234
    checkpoint.save(tmp_path / "a.pt", {"aggregator": agg.state_dict()})
    fresh = build_aggregator(cfg)
    fresh.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True)["aggregator"])
    if rule == "foolsgold":
        assert set(fresh.inner.history) == {3, 7} and torch.equal(fresh.inner.history[3], inner.history[3])
    elif rule == "fedavgm":
        assert np.array_equal(fresh.inner.momentum_vector[0], inner.momentum_vector[0])
        assert np.array_equal(fresh.inner.current_arrays["w"].numpy(), inner.current_arrays["w"].numpy())
    elif rule == "dp-clip":
        assert fresh.inner.clipping_norm == 1.234
    else:
        assert agg.state_dict() == {}


def test_client_memory_on_disk_is_what_a_fresh_node_restores(tmp_path: Path) -> None:
    folder = tmp_path / "client-state" / "2"
    node = RecordDict()
    for r in (1, 2, 4):
        save_memory(node, {"last": torch.full((2,), float(r))}, "k", folder, r)
    assert sorted(f.name for f in folder.iterdir()) == ["k-r2.pt", "k-r4.pt"]  # this round and the one before
    fresh = RecordDict()  # a resumed run's node
    assert torch.equal(load_memory(fresh, "k", folder, 5)["last"], torch.full((2,), 4.0))
    assert torch.equal(load_memory(fresh, "k", folder, 4)["last"], torch.full((2,), 2.0))  # resumed at round 4
    assert load_memory(fresh, "k", folder, 2) == {}
    assert torch.equal(load_memory(node, "k", folder, 3)["last"], torch.full((2,), 4.0))  # the node's own first


@pytest.mark.simulation
def test_killed_run_resumes_with_the_numbers_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """6 rounds with stateful parts (FoolsGold histories, FT every 2 rounds, a Neurotoxin attacker's memory):
    run once straight, once killed with SIGKILL after round 3 and resumed; every round's BA/ASR agrees."""
    settings = {"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05, "rounds": 6,
                "malicious-fraction": 0.25, "aggregation": "foolsgold", "defense": "ft", "defense-schedule": "every:2",
                "ft-epochs": 1, "attack-training": "neurotoxin", "device": "cpu"}
    straight = run_experiment(resolve({**settings, "out-dir": str(tmp_path / "a")}), tmp_path / "a")

    out = tmp_path / "b"
    args = [sys.executable, "-m", "simulations.cli", "run", "--out", str(out)]
    for k, v in settings.items():
        args += ["--set", f"{k}={v}"]
    # the server's float results depend on its torch threads: one, as in this process (conftest's one_thread)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    ckpt = out / "checkpoints" / checkpoint.NAME
    deadline = time.monotonic() + 300
    killed_after = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file():
            killed_after = int(torch.load(ckpt, weights_only=True)["round"])
            if killed_after >= 3:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert 3 <= killed_after < 6, "the run was killed mid-way"
    saved = checkpoint.load(out)
    assert saved["round"] >= killed_after
    partial = json.loads((out / "results.json").read_text())
    assert partial["rounds"][-1]["round"] < 6

    resumed = run_experiment(resolve({**saved["config"], "out-dir": str(out)}), out, resume=saved)
    assert resumed["resumed_after"] == [saved["round"]]
    rows_a = [(r["round"], r["ba"], r["asr"]) for r in straight["rounds"]]
    rows_b = [(r["round"], r["ba"], r["asr"]) for r in resumed["rounds"]]
    assert rows_b == rows_a
    assert [(d["round"], d["ba_after"], d["asr_after"]) for d in resumed["defense"]] == \
        [(d["round"], d["ba_after"], d["asr_after"]) for d in straight["defense"]]
    assert (out / "client-state").is_dir()  # the Neurotoxin attacker's memory, restored on resume
