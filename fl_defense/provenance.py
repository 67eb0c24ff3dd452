"""What made a number: the code's commit (and whether the tree had changes), the package versions, the machine.

Every results.json, purify.json, sweep summary and benchmark output carries `provenance()`; benchmark caches are
keyed on `code_version()`, so a cached run is never reused once the code changed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "torchvision", "flwr", "ray", "numpy")


def _git(*args: str) -> str | None:
    if not (ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


@lru_cache(maxsize=1)
def commit() -> tuple[str | None, bool]:
    """The checkout's commit and whether its tracked files differ from it (None, False outside a checkout)."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None, False
    return head.strip(), bool((_git("status", "--porcelain", "--untracked-files=no") or "").strip())


def code_version() -> str:
    """A short key of the code: the commit, and a hash of the uncommitted changes to tracked files other than
    Markdown if any (a benchmark writing its README block must not change the key of the next one's cache)."""
    head, dirty = commit()
    if head is None:
        return "unversioned"
    if not dirty:
        return head[:12]
    changes = _git("diff", "HEAD", "--", ".", ":(exclude)*.md") or ""  # prose (a benchmark's README) is not code
    return head[:12] if not changes.strip() else f"{head[:12]}+{hashlib.sha256(changes.encode()).hexdigest()[:8]}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """The commit, uncommitted changes, package versions, device, cores and torch threads of this process."""
    head, dirty = commit()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"commit": head, "dirty": dirty, "code_version": code_version(), "python": platform.python_version(),
            "versions": {p: _version(p) for p in PACKAGES}, "device": device, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def describe(record: dict[str, Any] | None = None) -> str:
    """One line for a benchmark's output: which code and machine made the numbers above it."""
    p = record or provenance()
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    state = "with uncommitted changes" if p["dirty"] else "clean tree"
    return (f"Made by commit {str(p['commit'])[:12]} ({state}, code version {p['code_version']}); {versions}; "
            f"Python {p['python']}; {p['device']}, {p['cpus']} cores, {p['torch_threads']} torch threads.")
