"""Atomic file writes: a temp file renamed over the target, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` of a file that must exist; a missing, corrupt or foreign (pickled code)
    file is a ConfigError naming it as `what` ('checkpoint ...')."""
    from fl_defense.config import ConfigError

    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign or corrupt files
        raise ConfigError(f"{what} {str(path)!r} cannot be read as a weights-only torch file: "
                          f"{str(exc).splitlines()[0][:200]}") from None
