"""The checkpoint a run writes after every round, and reads back to resume (`fl-defense run --resume DIR`).

It holds everything the next round depends on: the global model to broadcast, what the aggregation rule,
the shadow model and the server-side defense carry between rounds, the global random states, and the
results so far. It is written atomically (temp file + rename), so a crash, even SIGKILL mid-round, leaves
the last completed round's checkpoint, and it is read with `torch.load(weights_only=True)`: plain tensors,
numbers, strings and containers only. Clients keep their own memory (ABL's isolated samples, Neurotoxin's
last global model) on their side, see `clients.client_app`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_defense.config import ConfigError
from fl_defense.files import atomic_torch_save, read_torch_file

FORMAT = "fl-defense-resume/1"
NAME = "resume.pt"
KEYS = frozenset({"format", "round", "config", "arrays", "aggregator", "shadow", "defense", "results", "rng"})


def rng_state() -> dict[str, Any]:
    """The global random states (torch, NumPy, Python) as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                                       "has_gauss": int(has_gauss), "cached": float(cached), "kind": kind},
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    atomic_torch_save({"format": FORMAT, **checkpoint}, path)


def load(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's resume checkpoint; a missing, corrupt or foreign one is a ConfigError naming it."""
    path = Path(run_dir) / "checkpoints" / NAME
    if not Path(run_dir).is_dir():
        raise ConfigError(f"--resume {str(run_dir)!r}: no such run folder")
    if not path.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no checkpoint {str(path)!r}; the run did not finish a round")
    blob = read_torch_file(path, "--resume: checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or set(blob) != KEYS:
        raise ConfigError(f"--resume: {str(path)!r} is not an fl-defense resume checkpoint ({FORMAT})")
    return blob
