"""A sweep's runs as Ray tasks, `parallel` at a time, on this machine or across a Ray cluster.

Each run is a `fl-defense run` process of its own: a Flower simulation starts (or joins) Ray itself,
which code already running inside a Ray worker cannot do (../shared/notes). The task that starts
and watches it asks for no CPU, so tasks are placed at once and the runs' client actors hold the
CPUs and GPUs. With `ray-address` in the grid or `--set`, the sweep's tasks and every run's actors
join that cluster; the sweep's folder must then be on storage that every machine sees. A run's
output goes to `sweep-run.log` in its folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.sweep import RunRecord, fill, interrupted, label

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "sweep-run.toml"
LOG = "sweep-run.log"


def config_toml(cfg: dict[str, Any]) -> str:
    """A flat TOML table of the run's config, checked to read back as the same values."""
    lines = []
    for key, value in cfg.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{json.dumps(key)} = {text}")
    out = "\n".join(lines) + "\n"
    if tomllib.loads(out) != cfg:
        raise ValueError("config does not round-trip through TOML")
    return out


def _die_with_parent() -> None:
    """Linux: the run is killed when the Ray worker that started it dies (a stopped sweep leaves no run behind)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_process(cfg: dict[str, Any], resume: bool, env: dict[str, str]) -> dict[str, Any]:
    """Run one experiment as `fl-defense run` (or `--resume` its folder); its results.json."""
    out = Path(cfg["out-dir"])
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "simulations.cli", "run"]
    if resume:
        args += ["--resume", str(out)]
    else:
        (out / CONFIG).write_text(config_toml(cfg))
        args += ["--config", str(out / CONFIG)]
    with open(out / LOG, "a") as log:
        code = subprocess.run(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
                              preexec_fn=_die_with_parent if sys.platform == "linux" else None).returncode
    if code != 0:
        tail = (out / LOG).read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"fl-defense run exited with {code}: " + " / ".join(tail))
    return json.loads((out / "results.json").read_text())


def run_on_ray(todo: list[tuple[int, RunRecord, dict[str, Any]]], total: int, parallel: int,
               log: Callable[[str], None], done: Callable[[RunRecord], None]) -> None:
    """Run the (index, record, config) triples as Ray tasks, at most `parallel` at once; fill each record
    and call `done` as each run ends, in the order they end."""
    import ray

    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        address = todo[0][2]["ray-address"] or None
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    task = ray.remote(num_cpus=0, max_retries=0)(run_process)
    env = dict(os.environ)  # the runs see the sweep's environment, not a Ray worker's
    queue, pending = list(todo), {}
    try:
        while queue or pending:
            while queue and len(pending) < parallel:
                i, record, cfg = queue.pop(0)
                partial = interrupted(record.out_dir, cfg)
                prefix = f"[sweep {i}/{total}]"
                log(f"{label(record, prefix)}: "
                    + ("running" if partial is None else f"resuming after round {partial['round']}"))
                pending[task.remote(cfg, partial is not None, env)] = (prefix, record)
            ready, _ = ray.wait(list(pending), num_returns=1)
            prefix, record = pending.pop(ready[0])
            try:
                fill(record, ray.get(ready[0]))
                record.status = "done"
                log(f"{label(record, prefix)}: done, BA {record.ba:.4f} ASR {record.asr:.4f}")
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                record.status, record.error = "failed", f"{type(cause).__name__}: {cause}"
                log(f"{label(record, prefix)}: FAILED ({record.error})")
            done(record)
    finally:
        if started:
            ray.shutdown()
