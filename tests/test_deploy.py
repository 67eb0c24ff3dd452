"""The deployment path: SuperLink + 2 SuperNodes on loopback, TLS and SuperNode authentication on, 2 rounds."""

from __future__ import annotations

import http.client
import math
import os
import ssl
from pathlib import Path

import pytest
from fl_defense.simulations.deploy import deployment, make_material, run_deployment, start_supernode


def _processes_with_home(home: Path) -> list[int]:
    """Pids of processes whose environment carries this deployment's FLWR_HOME (every process it started and
    their descendants inherit it), so a process that escaped the bookkeeping is found too."""
    needle = f"FLWR_HOME={home}".encode()
    pids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                pids.append(int(d))
        except OSError:
            pass
    return pids


@pytest.mark.simulation
def test_deployment_runs_two_rounds_with_tls_and_supernode_auth(tmp_path: Path) -> None:
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
    assert _processes_with_home(work / "flwr-home") == []
