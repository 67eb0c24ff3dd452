"""The checkpoints a run writes, and the resume checkpoint it reads back (`fl-defense run --resume DIR`).

`checkpoints/resume.pt`, after every round, holds everything the next round depends on: the global model to
broadcast, what every piece of the strategy chain (the rule, the wrappers) and the server-side defense carry
between rounds, the global random states, and the results so far. `latest.pt` (every round) and `final.pt`
(at the end) hold the deployed model with the run's config, for `fl-defense purify`. Every file is written
atomically (temp file + rename), so a crash, even SIGKILL mid-round, leaves the last completed round's
files; a sweep takes `final.pt` as the sign that a run finished. Checkpoints are read with
`torch.load(weights_only=True)`: plain tensors, numbers, strings and containers only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_defense.errors import ConfigError
from fl_defense.files import atomic_torch_save, read_torch_file

FORMAT = "fl-defense-resume/2"
NAME = "resume.pt"
KEYS = frozenset({"format", "round", "config", "arrays", "strategy", "defense", "results", "rng"})


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


class Checkpointer:
    """Writes a run's checkpoints under `<out>/checkpoints`."""

    def __init__(self, out_dir: Path, cfg: dict[str, Any]) -> None:
        self.folder, self.cfg = out_dir / "checkpoints", cfg
        self.folder.mkdir(parents=True, exist_ok=True)

    def model(self, name: str, server_round: int, state: dict[str, torch.Tensor]) -> None:
        """`latest.pt` or `final.pt`: a model with the run's config, so `fl-defense purify` can rebuild its setting."""
        atomic_torch_save({"round": server_round, "model": state, "config": self.cfg}, self.folder / name)

    def resume(self, server_round: int, arrays: dict[str, torch.Tensor], strategy: list[dict[str, Any]],
               defense: dict[str, Any], results: dict[str, Any]) -> None:
        atomic_torch_save({"format": FORMAT, "round": server_round, "config": self.cfg, "arrays": arrays,
                           "strategy": strategy, "defense": defense, "results": results, "rng": rng_state()},
                          self.folder / NAME)


def load(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's resume checkpoint; a missing, corrupt, foreign or older one is a ConfigError naming it."""
    path = Path(run_dir) / "checkpoints" / NAME
    if not Path(run_dir).is_dir():
        raise ConfigError(f"--resume {str(run_dir)!r}: no such run folder")
    if not path.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no checkpoint {str(path)!r}; the run did not finish a round")
    blob = read_torch_file(path, "--resume: checkpoint")
    if isinstance(blob, dict) and str(blob.get("format", "")).startswith("fl-defense-resume/") and \
            blob.get("format") != FORMAT:
        raise ConfigError(f"--resume: {str(path)!r} was written by an earlier fl-defense ({blob['format']}, this one "
                          f"reads {FORMAT}); resume it with the version that wrote it")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or set(blob) != KEYS:
        raise ConfigError(f"--resume: {str(path)!r} is not an fl-defense resume checkpoint ({FORMAT})")
    if not isinstance(blob["config"], dict):
        raise ConfigError(f"--resume: {str(path)!r} holds a config that is not a table")
    return blob


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A run's checkpoint ({'model', 'config', 'round'}) or a bare state_dict, loaded with weights_only."""
    p = Path(path)
    blob = read_torch_file(p, "checkpoint")
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        config = blob.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"checkpoint {str(p)!r} holds a config that is not a table")
        return blob["model"], dict(config)
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob, {}
    raise ConfigError(f"checkpoint {str(p)!r} holds neither a state_dict nor an fl-defense checkpoint")


def load_model(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path,
               cfg: dict[str, Any]) -> None:
    """`model.load_state_dict(state)`; a state of another architecture is a ConfigError naming the file."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = lines[1] if len(lines) > 1 else lines[0] if lines else "no reason given"
        raise ConfigError(f"checkpoint {str(path)!r} does not fit model {cfg['model']!r} ({type(model).__name__}) "
                          f"on {cfg['dataset']!r}: {why[:200]}") from None
