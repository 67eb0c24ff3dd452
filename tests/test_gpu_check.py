"""benchmarks/gpu_check.py's CPU dry run: every step of the GPU check runs and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gpu_check import main


@pytest.mark.simulation
def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    assert main(["--dry-run", "--json", str(tmp_path / "figures.json")]) == 0
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["device"] == "cpu" and figures["federated"]["num_gpus"] == 0.0
    assert 0.0 <= figures["federated"]["ba"] <= 1.0 and figures["federated"]["seconds"] > 0
    assert set(figures["scan"]) == {"loop", "batched", "cpu loop"}
    assert figures["scan"]["loop"] == figures["scan"]["cpu loop"]  # on the CPU the device's loop is the CPU's
    assert figures["defense"]["asr_before"] > 0.5 and all(v > 0 for v in figures["ratios"].values())
    assert len(figures["provenance"]) > 20
