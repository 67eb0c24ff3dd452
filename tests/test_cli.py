"""The CLI refuses bad input with exit status 2 and one line naming the problem, before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_defense.simulations.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in its own process (its real exit status)."""
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
    (["run", "--set", "seed=-1"], "config key 'seed'"),
    (["run", "--set", "seed=9999999999999999999"], "config key 'seed'"),
    (["run", "--set", "partition=dirichlet", "--set", "alpha=0.000001", "--set", "num-clients=100",
      "--set", "clients-per-round=10"], "federated split cannot be made"),
    (["run", "--set", f"num-cpus={(os.cpu_count() or 1) * 2}"], "config key 'num-cpus'"),
    (["run", "--set", "num-cpus=0.01"], "client actors"),
    (["run", "--config", "{tmp}/binary.toml"], "is not a text file"),
    (["run", "--config", "{tmp}/tool.toml"], "unknown config key 'tool'"),
    (["run", "--config", "{tmp}"], "is a folder"),
    (["run", "--set", "trigger-pattern={tmp}/empty.npy"], "is not a readable .npy array"),
    (["run", "--set", "trigger-pattern={tmp}/archive.npy"], "is not a single numeric array"),
    (["run", "--set", "trigger-pattern={tmp}/nan.npy"], "not all finite"),
    (["run", "--set", "trigger-pattern={tmp}/corrupt.png"], "is not a readable PNG image"),
    (["run", "--set", "trigger-pattern={tmp}/truncated.png"], "is not a readable PNG image"),
    (["run", "--set", "data-root={tmp}/bad-magic", "--set", "download=false"], "cannot be read"),
    (["run", "--set", "data-root={tmp}/short-labels", "--set", "download=false"], "expected as many labels as images"),
    (["sweep", "--grid", "{tmp}/base.toml"], "[base] must be a table"),
    (["purify", "--checkpoint", "{tmp}/config-not-table.pt", "--defense", "ft"], "config that is not a table"),
    (["run", "--init-from", "/nonexistent.pt"], "does not exist"),
    (["run", "--init-from", "{tmp}/foreign.pt"], "does not fit model"),
    (["run", "--set", "round-timeout=0"], "config key 'round-timeout'"),
    (["run", "--out", "{tmp}/binary.toml"], "is a file, not a folder"),
]


def write_bad_files(tmp: Path) -> None:
    """The files the `{tmp}` cases above name: each broken in one way a user could meet."""
    import io

    import numpy as np
    from PIL import Image

    from fl_defense.data.fashion_mnist import FILES, prepare_debian_fashion_mnist

    (tmp / "binary.toml").write_bytes(bytes(range(256)))
    (tmp / "tool.toml").write_text('tool = "not a table"\n')
    (tmp / "empty.npy").write_bytes(b"")
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros((28, 28)))
    (tmp / "archive.npy").write_bytes(buffer.getvalue())  # an .npz archive under an .npy name
    np.save(tmp / "nan.npy", np.full((28, 28), np.nan, dtype=np.float32))
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(png, format="PNG")
    (tmp / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (tmp / "base.toml").write_text('base = 3\n[grid]\nseed = [0]\n')
    torch.save({"model": {"w": torch.zeros(2)}, "config": "not a table"}, tmp / "config-not-table.pt")
    torch.save({"conv.weight": torch.zeros(3)}, tmp / "foreign.pt")  # a bare state_dict of another network
    source = prepare_debian_fashion_mnist(root=tmp / "prepared")
    if source is None:
        return
    for name, broken in (("bad-magic", "train-images-idx3-ubyte"), ("short-labels", "train-labels-idx1-ubyte")):
        raw = tmp / name / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for f in FILES:
            (raw / f).write_bytes((source / "FashionMNIST" / "raw" / f).read_bytes())
        data = (raw / broken).read_bytes()
        if name == "bad-magic":
            (raw / broken).write_bytes(bytes(4) + data[4:])
        else:  # the test set's 10,000 labels beside 60,000 training images
            (raw / broken).write_bytes((source / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes())


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-files")
    write_bad_files(tmp)
    return tmp


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str, bad_files: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (`main` is what the console script calls; one interpreter start per case cost minutes)."""
    if "num-gpus=1" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rc = main([a.replace("{tmp}", str(bad_files)) for a in args])
    stderr = capsys.readouterr().err
    assert rc == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], stderr


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"conv.weight": torch.zeros(3)}, "config": {"dataset": "fashion-mnist"}}, foreign)
    for path, needle in ((corrupt, "cannot be read"), (foreign, "does not fit model")):
        proc = _cli("purify", "--checkpoint", str(path), "--defense", "ft")
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
