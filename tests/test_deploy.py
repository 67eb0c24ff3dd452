"""The deployment path: SuperLink + 2 SuperNodes on loopback, TLS and SuperNode authentication on, 2 rounds."""

from __future__ import annotations

import http.client
import math
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from fl_defense.simulations.deploy import (
    FEDERATION, ROOT, DeployError, deployment, flwr, flwr_env, main, make_material, run_deployment, start_supernode,
    submitted_run_id, write_federation,
)
from fl_defense.simulations.flwr_local import processes_with_home, stop


@pytest.mark.simulation
def test_deployment_runs_two_rounds_with_tls_and_supernode_auth(tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    with deployment(work) as procs:
        done = run_deployment(work, out, supernodes=2, rounds=2,
                              overrides={"train-fraction": "0.02", "attack": "'none'"}, procs=procs,
                              run_timeout_s=300)

        # TLS: a plain-text request is dropped; one verified against the throwaway CA gets an HTTP answer.
        plain = http.client.HTTPConnection("127.0.0.1", done.port, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/")
            plain.getresponse()
        tls = http.client.HTTPSConnection(
            "127.0.0.1", done.port, timeout=10, context=ssl.create_default_context(cafile=done.material.ca_cert))
        tls.request("GET", "/")
        assert tls.getresponse().status > 0

        # The Control API is the operator's: the gate (all a SuperNode reaches) answers 403 on its paths, and a
        # `flwr run` with a SuperNode's credentials (the CA certificate, the gate's address) is refused there.
        def post(port: int, path: str) -> int:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl.create_default_context(
                cafile=done.material.ca_cert))
            conn.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf"})
            return conn.getresponse().status

        assert post(done.port, "/v1/control/start-run") == 403
        assert post(done.port, "/v1/fleet/../control/start-run") == 403
        assert post(done.control_port, "/v1/control/start-run") != 403  # the operator's own door
        outsider = tmp_path / "outsider-home"
        write_federation(outsider, f"127.0.0.1:{done.port}", done.material.ca_cert)
        with pytest.raises(DeployError):
            log = tmp_path / "outsider.log"
            submitted_run_id(flwr(["run", str(ROOT), FEDERATION, "--format", "json", "--run-config", "rounds=1"],
                                  "a SuperNode's flwr run", log, flwr_env(outsider)), log)
        assert "fleet gate: refused POST /v1/control/" in capfd.readouterr().err

        # SuperNode authentication: a SuperNode whose key was never registered is turned away and exits.
        stranger = make_material(tmp_path / "stranger", 1).node_keys[0]
        log = done.logs / "unregistered-supernode.log"
        proc, _ = start_supernode(procs, "unregistered SuperNode", done.port, done.material.ca_cert, stranger,
                                  "partition-id=0 num-partitions=2", log, done.env)
        assert proc.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in log.read_text()
        started = set(procs.seen)

    rounds = done.results["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(math.isfinite(r["ba"]) and 0.0 <= r["ba"] <= 1.0 for r in rounds)
    assert rounds[2]["ba"] > 0.2  # two rounds of real training on 2 clients, above chance (0.1)
    assert all(r["sampled"] == [0, 1] and r["failures"] == 0 for r in rounds[1:])  # both partitions' SuperNodes
    assert len(started) >= 4  # SuperLink, 2 SuperNodes, their SuperExecs and app processes
    assert procs.alive() == []
    assert processes_with_home(work / "flwr-home") == []


def test_a_bad_set_is_refused_before_any_process_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--work", str(tmp_path), "--set", "rounds-per-day=3"]) == 2
    assert "unknown config key 'rounds-per-day'" in capsys.readouterr().err
    assert main(["--work", str(tmp_path), "--set", "attack='trojan'"]) == 2
    assert "config key 'attack'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started


def test_flwr_runs_refusal_is_an_error_and_the_ca_key_stays_in_memory(tmp_path: Path) -> None:
    log = tmp_path / "flwr-run.log"
    assert submitted_run_id('{"success": true, "run-id": 7}', log) == 7
    with pytest.raises(DeployError, match="refused the app: app too big"):
        submitted_run_id('{"success": false, "error-message": "app too big"}', log)
    assert not (make_material(tmp_path / "run", 1).ca_cert.parent / "ca.key").exists()
    assert (make_material(tmp_path / "prepared", 1, keep_ca_key=True).ca_cert.parent / "ca.key").is_file()


def test_the_local_stop_ends_the_processes_of_its_flwr_home_only(tmp_path: Path) -> None:
    """What the README gives after `flwr run .`: processes of another FLWR_HOME (another user's SuperLink) live on."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    ours = [subprocess.Popen(sleeper, env={**os.environ, "FLWR_HOME": str(tmp_path / "a")}) for _ in range(2)]
    theirs = subprocess.Popen(sleeper, env={**os.environ, "FLWR_HOME": str(tmp_path / "b")})
    try:
        assert sorted(stop(tmp_path / "a")) == sorted(p.pid for p in ours)
        assert all(p.wait(timeout=15) is not None for p in ours)
        assert theirs.poll() is None and processes_with_home(tmp_path / "b") == [theirs.pid]
    finally:
        for p in (*ours, theirs):
            p.kill()
            p.wait()
