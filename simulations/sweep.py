"""`fl-defense sweep --grid FILE.toml`: many experiments (attack x defense x seed ...), resumable.

The grid file has an optional `[base]` table of fixed keys and a `[grid]` table whose every key is a
list of values; the sweep runs their cross product, one results folder per run under `--out`, named by
the grid values. Every combination is checked before the first run starts. A run whose folder holds a
finished results.json of the same config is not run again, and one that was interrupted goes on from
its last completed round (its resume checkpoint), so an interrupted sweep is resumed by starting it
again. After each run `summary.md` and `summary.json` give final BA and ASR as mean and
standard deviation over seeds (and over any other axis left out with `--over`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import statistics
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from fl_defense.config import read_toml, resolve, schema
from fl_defense.errors import ConfigError
from fl_defense.files import atomic_write_json
from fl_defense.provenance import provenance


class Runner(Protocol):
    """What runs one experiment: `run_experiment`'s signature (config, folder, resume state)."""

    def __call__(self, cfg: dict[str, Any], out_dir: Path, *, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        ...


@dataclass(frozen=True)
class Grid:
    """Fixed keys, and the axes whose cross product is swept (in file order)."""

    base: dict[str, Any]
    axes: dict[str, list[Any]]


@dataclass
class RunRecord:
    """One point of the grid: its values, folder, and final numbers (or the error that stopped it)."""

    point: dict[str, Any]
    out_dir: Path
    status: str = "pending"
    ba: float | None = None
    asr: float | None = None
    seconds: float | None = None
    error: str | None = None


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; every combination must be a valid config (ConfigError otherwise)."""
    p = Path(path)
    data = read_toml(p, "grid file")
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ConfigError(f"grid file {str(p)!r}: unknown table(s) {sorted(unknown)}; allowed: [base], [grid]")
    base, axes = data.get("base", {}), data.get("grid")
    if not isinstance(base, dict):
        raise ConfigError(f"grid file {str(p)!r}: [base] must be a table of config keys")
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"grid file {str(p)!r}: needs a [grid] table of keys with lists of values")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid file {str(p)!r}: [grid] key '{key}' must be a non-empty list of values")
        if len(set(map(str, values))) != len(values):
            raise ConfigError(f"grid file {str(p)!r}: [grid] key '{key}' repeats a value")
    both = set(base) & set(axes)
    if both:
        raise ConfigError(f"grid file {str(p)!r}: key(s) {sorted(both)} are in both [base] and [grid]")
    if "out-dir" in base or "out-dir" in axes:
        raise ConfigError(f"grid file {str(p)!r}: 'out-dir' is set per run by the sweep; use --out")
    grid = Grid(dict(base), {k: list(v) for k, v in axes.items()})
    for point in points(grid):
        try:
            resolve({**grid.base, **point})
        except ConfigError as exc:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"grid file {str(p)!r}, run {where}: {exc}") from None
    return grid


def points(grid: Grid) -> list[dict[str, Any]]:
    """The cross product of the axes, as dicts in file order."""
    keys = list(grid.axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.axes.values())]


def _name_part(value: Any) -> str:
    """A value as a folder-name part; one whose unsafe characters were replaced gets a hash of the value, so two
    values that differ only there (`/a/p.npy`, `/a_p.npy`) never share a folder."""
    text = str(value)
    safe = re.sub(r"[^A-Za-z0-9.+-]", "_", text)
    return safe if safe == text else f"{safe}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def run_name(point: dict[str, Any]) -> str:
    """A folder name from the grid values: key=value joined by '__' (see `_name_part`)."""
    return "__".join(f"{k}={_name_part(v)}" for k, v in point.items())


def same_config(saved: Any, cfg: dict[str, Any]) -> bool:
    """Whether a saved run config is this config (keys it lacks count as their defaults; out-dir aside)."""
    if not isinstance(saved, dict):
        return False
    options = schema()
    return all(saved.get(k, options[k].default) == v for k, v in cfg.items() if k != "out-dir")


def finished(out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The run's results if its folder holds a complete run of this very config."""
    path = out_dir / "results.json"
    if not path.is_file() or not (out_dir / "checkpoints" / "final.pt").is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(results, dict) or not same_config(results.get("config"), cfg):
        return None
    rounds = results.get("rounds")
    last = rounds[-1] if isinstance(rounds, list) and rounds else None
    return results if isinstance(last, dict) and last.get("round") == cfg["rounds"] else None


def interrupted(out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The resume checkpoint of an unfinished run of this very config in the folder, if there is one."""
    from fl_defense.server import checkpoint

    if not (out_dir / "checkpoints" / checkpoint.NAME).is_file():
        return None
    try:
        state = checkpoint.load(out_dir)
    except ConfigError:
        return None  # unreadable: the run starts over
    return state if same_config(state["config"], cfg) and int(state["round"]) < cfg["rounds"] else None


def fill(record: RunRecord, results: dict[str, Any]) -> None:
    last = results["rounds"][-1]
    record.ba, record.asr = last["ba"], last["asr"]
    record.seconds = results.get("wall_seconds")


@dataclass(frozen=True)
class Job:
    """A run of the sweep still to do: its place in the grid, its record to fill, its config."""

    index: int
    record: RunRecord
    cfg: dict[str, Any]
    total: int

    @property
    def prefix(self) -> str:
        return f"[sweep {self.index}/{self.total}]"


Outcome = dict[str, Any] | BaseException  # a finished run's results, or what stopped it
Executor = Callable[[list[Job], Callable[[str], None]], Iterator[tuple[Job, Outcome]]]


def start(job: Job, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Announce a job; the resume checkpoint of its interrupted run, if there is one."""
    partial = interrupted(job.record.out_dir, job.cfg)
    log(f"{label(job.record, job.prefix)}: " + ("running" if partial is None
                                                else f"resuming after round {partial['round']}"))
    return partial


def in_process(runner: Runner) -> Executor:
    """Run the jobs one after another in this process with `runner`."""

    def run(jobs: list[Job], log: Callable[[str], None]) -> Iterator[tuple[Job, Outcome]]:
        for job in jobs:
            partial = start(job, log)
            try:
                yield job, runner(job.cfg, job.record.out_dir, resume=partial)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others
                traceback.print_exc(file=sys.stderr)
                yield job, exc

    return run


def finish(job: Job, outcome: Outcome, log: Callable[[str], None]) -> None:
    """Fill the job's record from its outcome. A user error (a missing dataset, no GPU) would fail every run, so
    it stops the sweep, serial or parallel alike (finished runs stay on disk); another error fails only this run."""
    record = job.record
    if isinstance(outcome, ConfigError):
        raise outcome
    if isinstance(outcome, BaseException):
        record.status, record.error = "failed", f"{type(outcome).__name__}: {outcome}"
        log(f"{label(record, job.prefix)}: FAILED ({record.error})")
        return
    fill(record, outcome)
    record.status = "done"
    log(f"{label(record, job.prefix)}: done, BA {record.ba:.4f} ASR {record.asr:.4f}")


def run_sweep(grid: Grid, out: Path, runner: Runner, overrides: dict[str, Any] | None = None,
              over: tuple[str, ...] = ("seed",), log: Callable[[str], None] = print,
              parallel: int = 1) -> list[RunRecord]:
    """Run every point not finished yet; write the summary after each. A run that fails is recorded with its
    error and the sweep goes on. A progress bar of runs shows on a terminal.

    With `parallel` > 1 the runs go to Ray as tasks, that many at a time (`simulations.sweep_ray`), each a
    `fl-defense run` process of its own; else `runner` runs them in this process, in order.
    """
    out.mkdir(parents=True, exist_ok=True)
    stray = set(over) - set(grid.axes)
    if stray:
        raise ConfigError(f"--over {sorted(stray)}: not keys of the grid; allowed: {', '.join(grid.axes)}")
    records = [RunRecord(point, (out / run_name(point)).resolve()) for point in points(grid)]
    cfgs = [resolve({**grid.base, **(overrides or {}), **r.point, "out-dir": str(r.out_dir)}) for r in records]
    jobs = [Job(i, r, c, len(records)) for i, (r, c) in enumerate(zip(records, cfgs, strict=True), start=1)]
    with tqdm(total=len(records), desc="sweep", unit="run", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        todo = [job for job in jobs if not _cached(job, log)]
        bar.update(len(jobs) - len(todo))
        if parallel > 1:
            from fl_defense.simulations.sweep_ray import on_ray

            executor: Executor = on_ray(parallel)
        else:
            executor = in_process(runner)
        for job, outcome in executor(todo, log):
            finish(job, outcome, log)
            write_summary(records, grid, out, over)
            bar.update(1)
    log(write_summary(records, grid, out, over))
    return records


def label(record: RunRecord, prefix: str) -> str:
    return f"{prefix} " + ", ".join(f"{k}={v}" for k, v in record.point.items())


def _cached(job: Job, log: Callable[[str], None]) -> bool:
    """Fill the job's record from a finished run of its config in its folder, if there is one."""
    done = finished(job.record.out_dir, job.cfg)
    if done is None:
        return False
    fill(job.record, done)
    job.record.status = "cached"
    log(f"{label(job.record, job.prefix)}: finished before, BA {job.record.ba:.4f} ASR {job.record.asr:.4f}")
    return True


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[RunRecord], over: tuple[str, ...] = ("seed",)) -> list[dict[str, Any]]:
    """Final BA/ASR mean and standard deviation per group of runs that differ only in the `over` axes."""
    groups: dict[tuple[tuple[str, str], ...], list[RunRecord]] = {}
    for r in records:
        key = tuple((k, str(v)) for k, v in r.point.items() if k not in over)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, members in groups.items():
        ok = [m for m in members if m.ba is not None and m.asr is not None]
        ba, ba_sd = _mean_std([m.ba for m in ok if m.ba is not None])
        asr, asr_sd = _mean_std([m.asr for m in ok if m.asr is not None])
        rows.append({**dict(key), "runs": len(ok), "of": len(members), "ba_mean": ba, "ba_std": ba_sd,
                     "asr_mean": asr, "asr_std": asr_sd,
                     "failed": [str(m.out_dir.name) for m in members if m.status == "failed"]})
    return rows


def format_summary(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """A markdown table: the grid keys, runs done, BA and ASR as mean ± std."""
    def pm(mean: float, sd: float) -> str:
        return "-" if math.isnan(mean) else f"{mean:.4f} ± {sd:.4f}"

    lines = ["| " + " | ".join([*keys, "runs", "BA", "ASR"]) + " |", "|" + "---|" * (len(keys) + 3)]
    for row in rows:
        lines.append("| " + " | ".join([*(row[k] for k in keys), f"{row['runs']}/{row['of']}",
                                         pm(row["ba_mean"], row["ba_std"]), pm(row["asr_mean"], row["asr_std"])])
                     + " |")
    return "\n".join(lines)


def write_summary(records: list[RunRecord], grid: Grid, out: Path, over: tuple[str, ...] = ("seed",)) -> str:
    rows = summarize(records, over)
    keys = [k for k in grid.axes if k not in over]
    text = format_summary(rows, keys)
    atomic_write_json(out / "summary.json", {
        "axes": grid.axes, "base": grid.base, "over": list(over), "provenance": provenance(), "groups": rows,
        "runs": [{"point": r.point, "dir": r.out_dir.name, "status": r.status, "ba": r.ba, "asr": r.asr,
                  "seconds": r.seconds, "error": r.error} for r in records]})
    (out / "summary.md").write_text(text + "\n")
    return text
