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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fl_defense.simulations.sweep import Executor, Job, Outcome, finished, start

from fl_defense.config import toml_value
from fl_defense.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "sweep-run.toml"
LOG = "sweep-run.log"
ERROR_PREFIX = "fl-defense: error: "


def config_toml(cfg: dict[str, Any]) -> str:
    """A flat TOML table of the run's config, checked to read back as the same values."""
    out = "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in cfg.items())
    if tomllib.loads(out) != cfg:
        raise ValueError("config does not round-trip through TOML")
    return out


def _die_with_parent() -> None:
    """Linux: the run is killed when the Ray worker that started it dies (a stopped sweep leaves no run behind)."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_process(cfg: dict[str, Any], resume: bool, env: dict[str, str]) -> tuple[int, str]:
    """Run one experiment as `fl-defense run` (or `--resume` its folder); its exit status and its last lines."""
    out = Path(cfg["out-dir"])
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "fl_defense.simulations.cli", "run"]
    if resume:
        args += ["--resume", str(out)]
    else:
        (out / CONFIG).write_text(config_toml(cfg))
        args += ["--config", str(out / CONFIG), "--overwrite"]  # the sweep chose to start this folder afresh
    with open(out / LOG, "a") as log:
        code = subprocess.run(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
                              preexec_fn=_die_with_parent if sys.platform == "linux" else None).returncode
    return code, "\n".join((out / LOG).read_text().strip().splitlines()[-3:])


def outcome_of(cfg: dict[str, Any], code: int, tail: str) -> Outcome:
    """The run's results (exit status 0, or 1 for a run that finished with every round skipped, as the serial
    sweep takes it); for exit status 2 the user error it printed, for another failure a RuntimeError."""
    if code == 0:
        results: dict[str, Any] = json.loads((Path(cfg["out-dir"]) / "results.json").read_text())
        return results
    if code == 1 and (skipped := finished(Path(cfg["out-dir"]), cfg)) is not None:
        return skipped
    if code == 2:
        lines = [line for line in tail.splitlines() if line.startswith(ERROR_PREFIX)]
        return ConfigError(lines[-1].removeprefix(ERROR_PREFIX) if lines else tail)
    return RuntimeError(f"fl-defense run exited with {code}: " + " / ".join(tail.splitlines()))


def on_ray(parallel: int) -> Executor:
    """Run the jobs as Ray tasks, at most `parallel` at once, each outcome as its run ends."""

    def run(jobs: list[Job], log: Callable[[str], None]) -> Iterator[tuple[Job, Outcome]]:
        import ray

        if not jobs:
            return
        started = not ray.is_initialized()
        if started:
            ray.init(address=jobs[0].cfg["ray-address"] or None, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
        task = ray.remote(num_cpus=0, max_retries=0)(run_process)
        env = dict(os.environ)  # the runs see the sweep's environment, not a Ray worker's
        queue, pending = list(jobs), {}
        try:
            while queue or pending:
                while queue and len(pending) < parallel:
                    job = queue.pop(0)
                    pending[task.remote(job.cfg, start(job, log) is not None, env)] = job
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                try:
                    yield job, outcome_of(job.cfg, *ray.get(ready[0]))
                except ray.exceptions.RayTaskError as exc:
                    yield job, exc.cause if exc.cause is not None else exc
        finally:
            if started:
                ray.shutdown()

    return run
