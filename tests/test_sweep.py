"""`fl-defense sweep`: the grid's cross product, one folder per run, resuming without redoing finished runs,
mean/std over seeds, and clear errors for bad grid files. The real run is in test_simulation."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fl_defense.config import resolve
from fl_defense.errors import ConfigError
from fl_defense.simulations.cli import main
from fl_defense.simulations.sweep import Grid, load_grid, points, run_name, run_sweep, summarize

GRID = """
[base]
rounds = 2
num-clients = 4
clients-per-round = 4

[grid]
attack = ["badnets", "blended"]
defense = ["none", "mcl", "ft"]
seed = [0, 1]
"""


class FakeRunner:
    """Writes what run_experiment writes (results.json, checkpoints/final.pt) with numbers made from the
    config, and can be told to be killed at a given call, as an interrupted sweep is."""

    def __init__(self, kill_at: int | None = None, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.resumed: list[dict[str, Any] | None] = []
        self.kill_at = kill_at
        self.fail = fail or set()

    def __call__(self, cfg: dict[str, Any], out: Path, *, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append(out.name)
        self.resumed.append(resume)
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        if out.name in self.fail:
            raise RuntimeError("client actors died")
        ba = 0.9 - 0.01 * cfg["seed"] - (0.02 if cfg["defense"] != "none" else 0)
        asr = 0.95 if cfg["defense"] == "none" else 0.05 + 0.01 * cfg["seed"]
        results = {"config": cfg, "rounds": [{"round": r, "ba": ba, "asr": asr} for r in range(cfg["rounds"] + 1)],
                   "wall_seconds": 1.0}
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "final.pt").write_bytes(b"x")
        (out / "results.json").write_text(json.dumps(results))
        return results


@pytest.fixture
def grid_file(tmp_path: Path) -> Path:
    f = tmp_path / "grid.toml"
    f.write_text(GRID)
    return f


def test_points_and_names(grid_file: Path) -> None:
    grid = load_grid(grid_file)
    pts = points(grid)
    assert len(pts) == 12 and pts[0] == {"attack": "badnets", "defense": "none", "seed": 0}
    assert run_name(pts[0]) == "attack=badnets__defense=none__seed=0"
    assert run_name({"trigger-pattern": "/a/b c.png"}).startswith("trigger-pattern=_a_b_c.png~")
    assert run_name({"trigger-pattern": "/a/p.npy"}) != run_name({"trigger-pattern": "/a_p.npy"}), "one folder each"
    assert run_name({"seed": 3, "attack": "blended"}) == "seed=3__attack=blended"
    assert len({run_name(p) for p in pts}) == 12


def test_interrupted_sweep_resumes_without_redoing_finished_runs(grid_file: Path, tmp_path: Path) -> None:
    grid, out = load_grid(grid_file), tmp_path / "sweep"
    first = FakeRunner(kill_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, out, first, log=lambda _: None)
    assert len(first.calls) == 6
    second = FakeRunner()
    records = run_sweep(grid, out, second, log=lambda _: None)
    assert second.calls == [run_name(p) for p in points(grid)][5:]  # the interrupted run and the rest
    assert [r.status for r in records] == ["cached"] * 5 + ["done"] * 7
    third = FakeRunner()
    run_sweep(grid, out, third, log=lambda _: None)
    assert third.calls == []
    changed = FakeRunner()
    run_sweep(Grid({**grid.base, "rounds": 3}, grid.axes), out, changed, log=lambda _: None)
    assert len(changed.calls) == 12  # another config is another run


def test_a_run_interrupted_mid_way_goes_on_from_its_checkpoint(grid_file: Path, tmp_path: Path) -> None:
    """A run killed after some rounds left its resume checkpoint: the sweep hands it to the runner; a
    checkpoint of another config or a corrupt one means the run starts over."""
    from fl_defense.server import checkpoint

    from fl_defense.files import atomic_torch_save

    grid, out = load_grid(grid_file), tmp_path / "sweep"
    names = [run_name(p) for p in points(grid)]
    cfgs = {name: resolve({**grid.base, **p, "out-dir": str((out / name).resolve())})
            for name, p in zip(names, points(grid), strict=True)}
    state = {"format": checkpoint.FORMAT, "round": 1, "arrays": {}, "strategy": [], "defense": {}, "results": {},
             "rng": {}}
    for name in names[:3]:
        (out / name / "checkpoints").mkdir(parents=True)
    atomic_torch_save({**state, "config": cfgs[names[0]]}, out / names[0] / "checkpoints" / checkpoint.NAME)
    other = {**cfgs[names[1]], "lr": 0.5}
    atomic_torch_save({**state, "config": other}, out / names[1] / "checkpoints" / checkpoint.NAME)
    (out / names[2] / "checkpoints" / checkpoint.NAME).write_bytes(b"not a checkpoint")
    runner = FakeRunner()
    run_sweep(grid, out, runner, log=lambda _: None)
    assert runner.calls == names
    assert runner.resumed[0] is not None and runner.resumed[0]["round"] == 1
    assert runner.resumed[1:] == [None] * 11


def test_summary_is_mean_and_std_over_seeds(grid_file: Path, tmp_path: Path) -> None:
    grid, out = load_grid(grid_file), tmp_path / "sweep"
    records = run_sweep(grid, out, FakeRunner(fail={"attack=blended__defense=ft__seed=1"}), log=lambda _: None)
    rows = {(r["attack"], r["defense"]): r for r in summarize(records)}
    assert len(rows) == 6
    mcl = rows[("badnets", "mcl")]
    assert mcl["runs"] == 2 and mcl["ba_mean"] == pytest.approx(0.875) and mcl["ba_std"] == pytest.approx(0.00707, abs=1e-5)
    assert mcl["asr_mean"] == pytest.approx(0.055)
    failed = rows[("blended", "ft")]
    assert failed["runs"] == 1 and failed["of"] == 2 and failed["ba_std"] == 0.0
    assert failed["failed"] == ["attack=blended__defense=ft__seed=1"]
    saved = json.loads((out / "summary.json").read_text())
    assert len(saved["runs"]) == 12 and saved["over"] == ["seed"]
    table = (out / "summary.md").read_text()
    assert "| badnets | mcl | 2/2 | 0.8750 ± 0.0071 | 0.0550 ± 0.0071 |" in table


@pytest.mark.parametrize(("text", "message"), [
    ("[grid]\nattack = 'badnets'\n", "must be a non-empty list"),
    ("[grid]\nattack = []\n", "must be a non-empty list"),
    ("[base]\nrounds = 2\n", "needs a [grid] table"),
    ("[grid]\nattack = ['badnets', 'badnets']\n", "repeats a value"),
    ("[grid]\nattack = ['badnets', 'trojan']\n", "run attack=trojan: config key 'attack'"),
    ("[grid]\nrounds = [1]\n[base]\nrounds = 2\n", "in both [base] and [grid]"),
    ("[grids]\nrounds = [1]\n", "unknown table"),
    ("[grid]\nout-dir = ['a']\n", "'out-dir' is set per run"),
    ("[grid\n", "not valid TOML"),
])
def test_bad_grid_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "g.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(f)


def test_cli_user_errors_exit_2(tmp_path: Path, grid_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--grid", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", "--grid", str(grid_file), "--set", "seed=3"]) == 2
    assert "axes of the grid" in capsys.readouterr().err
    assert main(["sweep", "--grid", str(grid_file), "--over", "lr", "--out", str(tmp_path / "o")]) == 2
    assert "not keys of the grid" in capsys.readouterr().err


def test_the_example_grid_is_valid() -> None:
    grid = load_grid(Path(__file__).resolve().parents[1] / "simulations" / "configs" / "sweep-example.toml")
    assert len(points(grid)) == 12 and set(grid.axes) == {"attack", "defense", "seed"}


def test_run_config_round_trips_through_toml() -> None:
    from fl_defense.simulations.sweep_ray import config_toml

    cfg = resolve({"attack": "blended", "trigger-alpha": 0.15, "ray-address": "", "lr": 1e-5, "download": False})
    assert tomllib.loads(config_toml(cfg)) == cfg
    assert resolve(tomllib.loads(config_toml(cfg))) == cfg


@pytest.mark.simulation
def test_parallel_sweep_runs_as_ray_tasks_and_resumes(tmp_path: Path) -> None:
    """Two real runs at once (Ray tasks, each its own `fl-defense run` process); started again, the sweep
    reuses both without starting a process."""
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\nrounds = 1\nnum-clients = 2\nclients-per-round = 2\ntrain-fraction = 0.02\n'
                    'client-checkpoints = false\n\n[grid]\nseed = [0, 1]\n')
    out = tmp_path / "sweep"
    assert main(["sweep", "--grid", str(grid), "--out", str(out), "--parallel", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done", "done"]
    assert all(0.0 < r["ba"] <= 1.0 for r in summary["runs"])
    assert all((out / r["dir"] / "checkpoints" / "final.pt").is_file() for r in summary["runs"])
    stamps = {r["dir"]: (out / r["dir"] / "results.json").stat().st_mtime_ns for r in summary["runs"]}
    assert main(["sweep", "--grid", str(grid), "--out", str(out), "--parallel", "2"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in again["runs"]] == ["cached", "cached"]
    assert stamps == {d: (out / d / "results.json").stat().st_mtime_ns for d in stamps}
    assert all((out / d / "plot.png").stat().st_size > 10_000 for d in stamps)  # each run's own figure
    assert main(["plot", str(out)]) == 0 and (out / "plot.png").stat().st_size > 10_000  # the grid's, over seeds


@pytest.mark.simulation
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_user_error_in_the_runs_stops_the_sweep_with_exit_2_serial_or_parallel(
        tmp_path: Path, parallel: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A data-root without the data passes the grid's checks but fails every run: both control flows stop at
    the first run with that one line and exit status 2 (a parallel run is its own process that exits 2)."""
    grid = tmp_path / "grid.toml"
    grid.write_text(f'[base]\nrounds = 1\nnum-clients = 2\nclients-per-round = 2\ndata-root = "{tmp_path / "none"}"\n'
                    'download = false\n\n[grid]\nseed = [0, 1]\n')
    assert main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "sweep"), "--parallel", parallel]) == 2
    err = capsys.readouterr().err
    assert "error: dataset 'fashion-mnist' not found under data-root" in err and "Traceback" not in err


def test_outcomes_of_run_processes() -> None:
    from fl_defense.simulations.sweep_ray import outcome_of

    user = outcome_of({"out-dir": "/nonexistent"}, 2, "noise\nfl-defense: error: config key 'x': bad")
    assert isinstance(user, ConfigError) and str(user) == "config key 'x': bad"
    crash = outcome_of({"out-dir": "/nonexistent"}, 1, "Traceback\nRuntimeError: boom")
    assert isinstance(crash, RuntimeError) and not isinstance(crash, ConfigError) and "exited with 1" in str(crash)
