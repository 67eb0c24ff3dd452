"""The CLI refuses bad input with exit status 2 and one line naming the problem, before any training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fl_defense.simulations.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


# The bad inputs of README's table (scripts/bad_input_table.py writes it from this list): CLI arguments, and a
# part of the one-line message each must give.
BAD_INPUTS: list[tuple[list[str], str]] = [
    (["run", "--set", "colour=red"], "unknown config key 'colour'"),
    (["run", "--set", "rounds=abc"], "config key 'rounds'"),
    (["run", "--set", "rounds=0"], "config key 'rounds'"),
    (["run", "--set", "malicious-fraction=1.5"], "config key 'malicious-fraction'"),
    (["run", "--set", "clean-fraction=1.0"], "config key 'clean-fraction'"),
    (["run", "--set", "num-clients=3", "--set", "clients-per-round=5"], "more than num-clients"),
    (["run", "--set", "trigger-size=40"], "'trigger-size'"),
    (["run", "--set", "trigger-location=27,27"], "'trigger-location'"),
    (["run", "--set", "target-label=12"], "'target-label'"),
    (["run", "--set", "attack=trojan"], "config key 'attack'"),
    (["run", "--set", "aggregation=bulyan"], "'clients-per-round'"),
    (["run", "--set", "min-replies=11"], "'min-replies'"),
    (["run", "--set", "client-defense=abl", "--set", "rounds=5"], "'abl-unlearn-rounds'"),
    (["run", "--set", "threat=poisoned-data", "--set", "attack-training=pgd"], "'attack-training'"),
    (["run", "--set", "data-root=/nonexistent/fl-defense-data", "--set", "download=false"], "not found under data-root"),
    (["run", "--set", "num-gpus=1"], "'num-gpus'"),
    (["run", "--set", "trigger-pattern=/nonexistent/p.png"], "'trigger-pattern'"),
    (["run", "--config", "/nonexistent.toml"], "does not exist"),
    (["run", "--resume", "/nonexistent/run"], "no such run folder"),
    (["sweep", "--grid", "/nonexistent/grid.toml"], "does not exist"),
    (["purify", "--checkpoint", "/nonexistent.pt", "--defense", "mcl"], "does not exist"),
    (["purify", "--checkpoint", "/nonexistent.pt", "--defense", "shadow"], "is not a purifier of a saved model"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS)
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
