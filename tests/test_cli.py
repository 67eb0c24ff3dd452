"""The CLI refuses bad input with exit status 2 and one line naming the problem, before any training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--set", "rounds=0"], "config key 'rounds'"),
    (["run", "--set", "colour=red"], "unknown config key 'colour'"),
    (["run", "--set", "num-clients=3", "--set", "clients-per-round=5"], "more than num-clients"),
    (["run", "--set", "target-label=12"], "'target-label'"),
    (["run", "--set", "trigger-location=27,27"], "'trigger-location'"),
    (["run", "--set", "data-root=/nonexistent/fl-defense-data"], "not found under data-root"),
    (["run", "--set", "num-gpus=1"], "'num-gpus'"),
    (["run", "--config", "/nonexistent.toml"], "does not exist"),
    (["purify", "--checkpoint", "/nonexistent.pt", "--defense", "mcl"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    if "num-gpus=1" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"conv.weight": torch.zeros(3)}, "config": {"dataset": "fashion-mnist"}}, foreign)
    for path, needle in ((corrupt, "cannot be read"), (foreign, "does not fit model")):
        proc = _cli("purify", "--checkpoint", str(path), "--defense", "ft")
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
