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

import itertools
import json
import math
import re
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from fl_defense.config import OPTIONS, ConfigError, read_toml, resolve
from fl_defense.data import DatasetNotFoundError
from fl_defense.files import atomic_write_json

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


def run_name(point: dict[str, Any]) -> str:
    """A folder name from the grid values: key=value joined by '__', unsafe characters replaced."""
    return "__".join(f"{k}={re.sub(r'[^A-Za-z0-9.+-]', '_', str(v))}" for k, v in point.items())


def finished(out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The run's results if its folder holds a complete run of this very config."""
    path = out_dir / "results.json"
    if not path.is_file() or not (out_dir / "checkpoints" / "final.pt").is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    saved = results.get("config", {})
    same = all(saved.get(k, OPTIONS[k].default) == v for k, v in cfg.items() if k != "out-dir")
    rounds = results.get("rounds") or []
    return results if same and rounds and rounds[-1]["round"] == cfg["rounds"] else None


def interrupted(out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The resume checkpoint of an unfinished run of this very config in the folder, if there is one."""
    from server import checkpoint

    if not (out_dir / "checkpoints" / checkpoint.NAME).is_file():
        return None
    try:
        state = checkpoint.load(out_dir)
    except ConfigError:
        return None  # unreadable: the run starts over
    saved = state["config"]
    same = all(saved.get(k, OPTIONS[k].default) == v for k, v in cfg.items() if k != "out-dir")
    return state if same and int(state["round"]) < cfg["rounds"] else None


def fill(record: RunRecord, results: dict[str, Any]) -> None:
    last = results["rounds"][-1]
    record.ba, record.asr = last["ba"], last["asr"]
    record.seconds = results.get("wall_seconds")


def run_sweep(grid: Grid, out: Path, runner: Runner, overrides: dict[str, Any] | None = None,
              over: tuple[str, ...] = ("seed",), log: Callable[[str], None] = print,
              parallel: int = 1) -> list[RunRecord]:
    """Run every point not finished yet, in order; write the summary after each. A run that fails is
    recorded with its error and the sweep goes on. A progress bar of runs shows on a terminal.

    With `parallel` > 1 the runs go to Ray as tasks, that many at a time (see `simulations.sweep_ray`);
    `runner` is then not used: each run is a `fl-defense run` process of its own.
    """
    out.mkdir(parents=True, exist_ok=True)
    stray = set(over) - set(grid.axes)
    if stray:
        raise ConfigError(f"--over {sorted(stray)}: not keys of the grid; allowed: {', '.join(grid.axes)}")
    records = [RunRecord(point, (out / run_name(point)).resolve()) for point in points(grid)]
    cfgs = [resolve({**grid.base, **(overrides or {}), **r.point, "out-dir": str(r.out_dir)}) for r in records]
    with tqdm(total=len(records), desc="sweep", unit="run", file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        if parallel > 1:
            from simulations.sweep_ray import run_on_ray

            todo = []
            for i, (record, cfg) in enumerate(zip(records, cfgs, strict=True), start=1):
                if _cached(record, cfg, f"[sweep {i}/{len(records)}]", log):
                    bar.update(1)
                else:
                    todo.append((i, record, cfg))

            def done(record: RunRecord) -> None:
                write_summary(records, grid, out, over)
                bar.update(1)

            run_on_ray(todo, len(records), parallel, log, done)
        else:
            for i, (record, cfg) in enumerate(zip(records, cfgs, strict=True), start=1):
                _run_one(record, cfg, runner, f"[sweep {i}/{len(records)}]", log)
                write_summary(records, grid, out, over)
                bar.update(1)
    log(write_summary(records, grid, out, over))
    return records


def label(record: RunRecord, prefix: str) -> str:
    return f"{prefix} " + ", ".join(f"{k}={v}" for k, v in record.point.items())


def _cached(record: RunRecord, cfg: dict[str, Any], prefix: str, log: Callable[[str], None]) -> bool:
    """Fill `record` from a finished run of this config in its folder, if there is one."""
    done = finished(record.out_dir, cfg)
    if done is None:
        return False
    fill(record, done)
    record.status = "cached"
    log(f"{label(record, prefix)}: finished before, BA {record.ba:.4f} ASR {record.asr:.4f}")
    return True


def _run_one(record: RunRecord, cfg: dict[str, Any], runner: Runner, prefix: str,
             log: Callable[[str], None]) -> None:
    if _cached(record, cfg, prefix, log):
        return
    partial = interrupted(record.out_dir, cfg)
    log(f"{label(record, prefix)}: " + ("running" if partial is None else f"resuming after round {partial['round']}"))
    try:
        fill(record, runner(cfg, record.out_dir, resume=partial))
        record.status = "done"
    except (ConfigError, DatasetNotFoundError):
        raise  # a user error (a missing dataset, no GPU) would fail every run: stop; finished runs stay on disk
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        log(f"{label(record, prefix)}: FAILED ({record.error})")
        traceback.print_exc(file=sys.stderr)


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
        "axes": grid.axes, "base": grid.base, "over": list(over), "groups": rows,
        "runs": [{"point": r.point, "dir": r.out_dir.name, "status": r.status, "ba": r.ba, "asr": r.asr,
                  "seconds": r.seconds, "error": r.error} for r in records]})
    (out / "summary.md").write_text(text + "\n")
    return text
