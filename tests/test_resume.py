"""Checkpoints and `fl-defense run --resume`: what the rules, the defense and the clients carry between rounds
survives; Ctrl-C leaves a folder that resumes; bad checkpoints get one clear error. (A run SIGKILLed and resumed
through Flower and Ray, with the numbers of an uninterrupted run: tests/test_plugins.py.)"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from benchmarks.common import start_run, wait_for_round
from fl_defense.attacks import Trigger
from fl_defense.attacks.trigger import StampMix
from fl_defense.inversion.warp import WarpStamp
from fl_defense.clients.client_app import load_memory, save_memory
from fl_defense.config import resolve
from fl_defense.data import dataset_spec
from fl_defense.defense import TriggerStage
from fl_defense.errors import ConfigError
from fl_defense.files import atomic_torch_save
from fl_defense.inversion.nc import NeuralCleanseScan
from fl_defense.models import build_model
from fl_defense.server import checkpoint
from fl_defense.server.checkpoint import Checkpointer
from fl_defense.simulations.cli import main

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
    assert "drop --config, --set, --out, --overwrite and --init-from" in capsys.readouterr().err


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


def test_trigger_stage_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    """The memory of flagged labels and the NC source's reference models survive a checkpoint."""
    model = build_model("cnn", dataset_spec("fashion-mnist"))
    stage = TriggerStage(NeuralCleanseScan(resolve()))
    stage.source.reference.models = [build_model("cnn", dataset_spec("fashion-mnist")) for _ in range(2)]
    triggers = [Trigger(torch.rand(1, 28, 28), torch.rand(1, 28, 28), 1.0) for _ in range(3)]
    both = StampMix((triggers[2], WarpStamp(torch.randn(1, 2, 4, 4))))  # nc+warp inverted label 5 twice
    stage.found, stage.calls = {3: (triggers[0], 2), 8: (triggers[1], 4), 5: (both, 4)}, 4
    atomic_torch_save({"defense": stage.state_dict()}, tmp_path / "m.pt")
    back = TriggerStage(NeuralCleanseScan(resolve()))
    back.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True)["defense"], model)
    assert back.calls == 4 and list(back.found) == [3, 8, 5]
    images = torch.rand(6, 1, 28, 28)
    for label, (t, call) in stage.found.items():
        assert back.found[label][1] == call and type(back.found[label][0]) is type(t)
        assert torch.equal(back.found[label][0].apply(images), t.apply(images))
    assert len(back.source.reference.models) == 2
    for restored, kept in zip(back.source.reference.models, stage.source.reference.models, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), kept.state_dict().values(),
                                                     strict=True))
    empty = TriggerStage(NeuralCleanseScan(resolve()))
    empty.load_state_dict(TriggerStage(NeuralCleanseScan(resolve())).state_dict(), model)
    assert empty.source.reference.models == [] and empty.found == {} and empty.calls == 0


def test_a_checkpoint_of_an_earlier_format_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    torch.save({"format": "fl-defense-resume/1", "round": 3}, tmp_path / "checkpoints" / checkpoint.NAME)
    with pytest.raises(ConfigError, match="written by an earlier fl-defense.*resume it with the version"):
        checkpoint.load(tmp_path)


def test_final_model_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while final.pt is written (the sweep takes its existence as "finished") leaves no final.pt."""
    writer = Checkpointer(tmp_path, resolve())

    def torn(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="disk full"):
        writer.model("final.pt", 20, {"w": torch.zeros(2)})
    assert not (tmp_path / "checkpoints" / "final.pt").exists()
    assert list((tmp_path / "checkpoints").iterdir()) == [], "no temporary file is left behind"


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


def no_process_left(group: int, within: float) -> bool:
    """True once no process of the process group is alive (within `within` seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.simulation
@pytest.mark.parametrize("signum, to_group, status, said", [
    (signal.SIGINT, True, 130, "interrupted"),  # Ctrl-C: a terminal signals the foreground process group
    (signal.SIGTERM, False, 143, "terminated (SIGTERM)"),  # `kill PID`, `timeout`: the run's process only
])
def test_one_signal_ends_a_run_at_once_with_one_line_and_a_resumable_folder(
        tmp_path: Path, signum: signal.Signals, to_group: bool, status: int, said: str) -> None:
    """A live run's folder is refused to a second run; one Ctrl-C or SIGTERM ends the run within 30 s with exit
    128 + the signal and one line of ours (no traceback, no Ray stack dump), and the folder resumes."""
    out = tmp_path / "run"
    settings = {"num-clients": 2, "clients-per-round": 2, "train-fraction": 0.05, "rounds": 50, "device": "cpu"}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        proc = start_run(settings, out, stderr=stderr)
        assert wait_for_round(proc, out, 1) >= 1
        assert main(["run", "--out", str(out), "--overwrite"]) == 2  # the live run keeps its folder
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        started = time.monotonic()
        proc.wait(timeout=60)
    assert proc.returncode == status and time.monotonic() - started < 30
    lines = log.read_text().splitlines()
    ours = [line for line in lines if line.startswith("fl-defense:")]
    assert ours == [f"fl-defense: {said}; continue with: fl-defense run --resume {out}"], lines
    assert not any("Traceback" in line or "SIGTERM received" in line for line in lines[lines.index(ours[0]):]), lines
    # On Ctrl-C, Ray's own processes get the group's SIGINT too and may print a KeyboardInterrupt of theirs (seen
    # once on a fresh clone) before the run's line; the run's own process prints only that line.
    assert no_process_left(proc.pid, within=15)  # Ray's processes (in the run's process group) stopped with it
    saved = checkpoint.load(out)
    assert 1 <= saved["round"] < 50 and saved["results"]["rounds"][-1]["round"] == saved["round"]
    assert main(["run", "--out", str(out)]) == 2  # a stopped run's folder needs --resume or --overwrite


def test_a_held_folder_is_refused_and_an_earlier_run_is_kept_unless_overwritten(tmp_path: Path) -> None:
    from fl_defense.simulations.run_folder import hold, prepare

    out = tmp_path / "run"
    with hold(out):
        with pytest.raises(ConfigError, match=f"in use by a running fl-defense \\(pid {os.getpid()}\\)"):
            with hold(out):
                pass
    with hold(out):  # released when the first run ended
        pass
    (out / "checkpoints").mkdir()
    (out / "results.json").write_text("{}")
    (out / "plot.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run \\(results.json, checkpoints, plot.png\\)"):
        prepare(out, overwrite=False)
    assert (out / "results.json").is_file()
    prepare(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".fl-defense.lock", "notes.txt"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the process tree is read from /proc")
def test_the_stop_finds_every_process_the_run_started_and_nothing_else() -> None:
    """A stopped run kills its descendants (Ray's processes), grandchildren included, and never its parent."""
    import subprocess

    from fl_defense.simulations.run_folder import descendants

    child = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    try:
        found = descendants(os.getpid())
        assert found is not None and child.pid in found and grandchild in found
        assert os.getpid() not in found and os.getppid() not in found
        assert found.index(child.pid) < found.index(grandchild), "children first"
    finally:
        for pid in (grandchild, child.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.wait()
