"""Atomic file writes: a temp file of its own renamed over the target, so a crash never leaves half a file and two
writers never share a temporary file; and the checked reads of the project's weights-only torch files."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fl_defense.errors import ConfigError


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def ensure_writable_folder(path: Path, what: str) -> None:
    """Create `path` as a folder if needed; a file in its place or a place that cannot be written is a ConfigError."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fl-defense-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be written: {exc.strerror or exc}") from None


def read_torch_file(path: Path, what: str) -> Any:
    """`torch.load(weights_only=True)` of a file that must exist; a missing, corrupt or foreign (pickled code)
    file is a ConfigError naming it as `what` ('checkpoint ...')."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign or corrupt files
        raise ConfigError(f"{what} {str(path)!r} cannot be read as a weights-only torch file: "
                          f"{str(exc).splitlines()[0][:200]}") from None
