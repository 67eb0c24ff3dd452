"""End to end through Flower and Ray: a small slice of real Fashion-MNIST, a backdoor that is learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from fl_defense.attacks import malicious_clients
from fl_defense.config import resolve
from fl_defense.plotting import DPI, FIGSIZE
from fl_defense.simulations.runner import run_experiment


@pytest.mark.simulation
def test_backdoor_is_planted_through_flower_and_ray(tmp_path: Path) -> None:
    """4 clients on 10% of the data, 2 malicious; fine-tuning scheduled every 2 rounds runs after round 2 only."""
    cfg = resolve({"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.1, "rounds": 3,
                   "local-epochs": 2, "malicious-fraction": 0.5, "lr": 0.05, "device": "cpu",
                   "defense": "ft", "defense-schedule": "every:2", "ft-epochs": 2, "out-dir": str(tmp_path)})
    results = run_experiment(cfg, tmp_path)

    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    final = rounds[-1]
    assert final["ba"] > 0.6, "clean accuracy should be far above chance (0.1)"
    assert final["asr"] >= 0.9, "two of four clients poisoning half their batches plant the backdoor"
    assert rounds[0]["asr"] < 0.5
    assert final["asr_beyond_clean"] > 0.8 and final["clean_to_target"] < 0.2, "the backdoor, not a confusion"
    assert all(r["asr_beyond_clean"] + r["clean_to_target"] >= r["asr"] - 1e-6 for r in rounds)
    bad = sorted(malicious_clients(4, 0.5, cfg["seed"]))
    for row in rounds[1:]:
        assert row["sampled"] == [0, 1, 2, 3]
        assert row["attackers"] == bad
        assert row["failures"] == 0
        assert row["train_loss"] > 0 and row["seconds"] > 0

    (defense,) = results["defense"]
    assert defense["round"] == 2 and defense["defense"] == "ft" and defense["purified"] is True
    assert (rounds[2]["ba"], rounds[2]["asr"]) == pytest.approx((defense["ba_after"], defense["asr_after"])), \
        "what the defense returned is the round's global model"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["config"] == cfg
    made_by = on_disk["provenance"]
    assert len(made_by["commit"]) == 40 and isinstance(made_by["dirty"], bool)
    assert set(made_by["versions"]) == {"torch", "torchvision", "flwr", "ray", "numpy"}
    assert all(made_by["versions"].values()) and made_by["device"] == "cpu" and made_by["torch_threads"] >= 1
    assert (tmp_path / "checkpoints" / "final.pt").is_file()
    with Image.open(tmp_path / "plot.png") as figure:  # written at the end of the run
        assert figure.format == "PNG" and figure.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.simulation
def test_dba_pieces_and_durability_through_flower_and_ray(tmp_path: Path) -> None:
    """DBA's per-piece ASR is recorded every round, and the durability of the one attack window at the end.
    The MCL defense after round 2 scans the labels on the Ray actor pool, beside Flower's client actors
    (which hold every CPU)."""
    cfg = resolve({"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05, "rounds": 3,
                   "malicious-fraction": 0.5, "device": "cpu", "attack": "dba", "attack-schedule": "window:1-1",
                   "attack-training": "neurotoxin", "defense": "mcl", "defense-schedule": "every:2",
                   "inversion": "nc", "inversion-mode": "ray", "nc-epochs": 2, "nc-images": 200,
                   "nc-reference-epochs": 1, "mcl-epochs": 1, "out-dir": str(tmp_path)})
    results = run_experiment(cfg, tmp_path)
    (scan,) = results["defense"]
    assert scan["round"] == 2 and scan["inversion_mode"] == "ray" and len(scan["mask_l1"]) == 10
    assert all(1 <= e <= 2 for e in scan["inversion_epochs"])
    rounds = results["rounds"]
    assert all(set(r["asr_pieces"]) == {"piece-0", "piece-1", "piece-2", "piece-3"} for r in rounds)
    assert [bool(r.get("attackers")) for r in rounds[1:]] == [True, False, False]
    assert all(r["failures"] == 0 for r in rounds[1:])
    (window,) = results["durability"]
    assert window["window"] == [1, 1] and window["last_attack"] == 1 and window["observed"] == 2
    fell = next((r["round"] - 1 for r in rounds[1:] if r["asr"] < 0.1), None)
    assert window["rounds_to_fall"] == fell


HEAD = """
import sys, time, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # hold the cluster until the test closes stdin
actors = ray._private.state.actors()
print(sum("ClientAppActor" in str(a.get("ActorClassName", "")) for a in actors.values()), flush=True)
"""


@pytest.mark.simulation
def test_clients_run_on_an_existing_ray_cluster(tmp_path: Path) -> None:
    """`ray-address` joins a running Ray cluster (here one started by another process) instead of starting one."""
    import subprocess
    import sys

    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = head.stdout.readline().strip() if head.stdout else ""
        assert ":" in address, "the head process started Ray"
        cfg = resolve({"num-clients": 2, "clients-per-round": 2, "train-fraction": 0.02, "rounds": 1,
                       "device": "cpu", "ray-address": address, "out-dir": str(tmp_path)})
        results = run_experiment(cfg, tmp_path)
        assert results["rounds"][-1]["failures"] == 0 and results["rounds"][-1]["ba"] > 0.3
    finally:
        out, _ = head.communicate(input="", timeout=60)  # closes stdin: the head reports and stops its cluster
    assert int(out.strip().splitlines()[-1]) >= 1, "Flower's client actors ran on the head's cluster"
