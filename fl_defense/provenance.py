"""What made a number: the code's commit (and whether the tree had changes), the package versions, the machine.

Every results.json, purify.json, sweep summary and benchmark output carries `provenance()`; benchmark caches are
keyed on `code_version()`, so a cached run is never reused once the code changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
SUBPACKAGES = ("fl_defense.server", "fl_defense.clients", "fl_defense.simulations")  # mapped to top-level folders


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


def foreign() -> list[str]:
    """The subpackages imported from outside this checkout. The editable install maps fl_defense.server, .clients and
    .simulations to the folders of the checkout it was made from, so a second checkout (a git worktree) run with
    that install's Python on PYTHONPATH gets its own fl_defense but the first one's server: numbers that no
    commit made (seen here: a benchmark worktree ran the main checkout's uncommitted server code)."""
    out = []
    for name in SUBPACKAGES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is not None and not origin.is_relative_to(ROOT.resolve()):
            out.append(f"{name} from {origin.parent}")
    return out


# What a benchmark writes into the checkout (its README block, its figure, its runs' records, which git keeps): changes
# to these are not code. A defense-table run that had written its PNG gave the next part's runs a dirty key while the
# code was the commit's; a trigger-type run rewriting its results.json did the same to every later benchmark.
NOT_CODE = ("*.md", "*.png", "benchmarks/runs")


def code_version() -> str:
    """A short key of the code: the commit, and a hash of the uncommitted changes to tracked files other than
    `NOT_CODE` if any (a benchmark writing its README block, figure or records must not change the key of the next
    one's runs); "+mixed" when part of the code came from another checkout (`foreign`)."""
    head, dirty = commit()
    if head is None:
        return "unversioned"
    mixed = "+mixed" if foreign() else ""
    if not dirty:
        return head[:12] + mixed
    changes = _git("diff", "HEAD", "--", ".", *(f":(exclude){pattern}" for pattern in NOT_CODE)) or ""
    key = head[:12] if not changes.strip() else f"{head[:12]}+{hashlib.sha256(changes.encode()).hexdigest()[:8]}"
    return key + mixed


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """The commit, uncommitted changes, code from another checkout, package versions, device, cores and torch
    threads of this process."""
    head, dirty = commit()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"commit": head, "dirty": dirty, "code_version": code_version(), "foreign": foreign(),
            "python": platform.python_version(),
            "versions": {p: _version(p) for p in PACKAGES}, "device": device, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def describe(record: dict[str, Any] | None = None) -> str:
    """One line for a benchmark's output: which code and machine made the numbers above it."""
    p = record or provenance()
    versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
    state = "with uncommitted changes" if p["dirty"] else "clean tree"
    return (f"Made by commit {str(p['commit'])[:12]} ({state}, code version {p['code_version']}); {versions}; "
            f"Python {p['python']}; {p['device']}, {p['cpus']} cores, {p['torch_threads']} torch threads.")
