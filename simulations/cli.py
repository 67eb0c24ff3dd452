"""`fl-defense run [--config FILE.toml] [--set key=value ...] [--out DIR]`, `fl-defense purify ...`,
`fl-defense sweep --grid FILE.toml [--out DIR]`, `fl-defense plot DIR`, `fl-defense list`."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from fl_defense.config import ALIASES, LAYOUT, load_plugins, load_toml, parse_set, resolve
from fl_defense.errors import ConfigError
from fl_defense.registry import PURIFIERS, Registry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-defense", description="Federated backdoor attacks and defenses.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated experiment",
                         epilog="`fl-defense list` shows every method and its keys.")
    run.add_argument("--config", help="TOML file of config keys (flat, or under [tool.flwr.app.config])")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    run.add_argument("--out", help="output folder (default: runs/<dataset>-<attack>-<time>)")
    run.add_argument("--init-from", metavar="CHECKPOINT", help="start from this saved global model (the key "
                     "init-from), e.g. a clean pre-trained one")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its folder's last completed "
                     "round (its own config; no --config or --set)")
    pur = sub.add_parser("purify", help="run a server-side defense on a saved global model")
    pur.add_argument("--checkpoint", required=True, help="a run's checkpoints/*.pt (or a bare state_dict)")
    pur.add_argument("--defense", required=True, help=f"a purifier: {', '.join(PURIFIERS.entries)}")
    pur.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    pur.add_argument("--out", help="folder for purify.json and purified.pt")
    sw = sub.add_parser("sweep", help="run a grid of experiments (resumable), with mean/std over seeds")
    sw.add_argument("--grid", required=True, help="TOML file with [base] keys and [grid] lists of values")
    sw.add_argument("--out", help="folder of the sweep's runs and summary (default: runs/sweep-<grid file name>)")
    sw.add_argument("--over", default="seed", help="comma-separated grid keys to average over (default: seed)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of every run (repeatable)")
    sw.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="runs at once, as Ray tasks (each its own `fl-defense run` process; with ray-address "
                    "set, on that cluster); default 1: one after another in this process")
    pl = sub.add_parser("plot", help="BA/ASR per round of a run folder, or of a sweep folder's groups (mean ± std)")
    pl.add_argument("folder", help="a run folder (results.json) or a sweep folder (summary.json)")
    pl.add_argument("--out", help="PNG file to write (default: FOLDER/plot.png)")
    ls = sub.add_parser("list", help="every selectable method, with a line on what it is and its keys")
    ls.add_argument("--plugins", default="", help="modules to import first (as the `plugins` key)")
    return parser


def describe_methods() -> str:
    """Every registry's key and members, each with its summary and its own keys (from the registries)."""
    out = []
    for item in LAYOUT:
        if not isinstance(item, Registry):
            continue
        out.append(f"{item.key}: {item.help} (default {item.default})")
        out += [f"  {x}" for x in item.extra]
        if item.options:
            out.append("  keys of every " + item.what + ": " + ", ".join(o.key for o in item.options))
        for entry in item:
            keys = f" [{', '.join(o.key for o in entry.options)}]" if entry.options else ""
            out += textwrap.wrap(f"{entry.name}: {entry.summary}{keys}", 116, initial_indent="  ",
                                 subsequent_indent="      ", break_on_hyphens=False)
    return "\n".join(out)


def _aliases_used(overrides: dict[str, object]) -> None:
    for (key, value), settings in ALIASES.items():
        if overrides.get(key) == value:
            meant = " ".join(f"{k}={v}" for k, v in settings.items())
            print(f"fl-defense: note: {key}={value} is an alias of {meant}", file=sys.stderr)


def _status(results: dict[str, Any]) -> int:
    """Exit status of a finished run: 1 when no round was aggregated (Progress has said so), else 0."""
    from fl_defense.server.reporting import nothing_aggregated

    return 1 if nothing_aggregated(results) else 0


def _resume(args: argparse.Namespace) -> int:
    from fl_defense.server import checkpoint
    from fl_defense.simulations.runner import run_experiment

    if args.config or args.set or args.out or args.overwrite or args.init_from:
        raise ConfigError("--resume continues a run with its own config and folder; drop --config, --set, --out, "
                          "--overwrite and --init-from")
    state = checkpoint.load(args.resume)
    cfg = resolve({**state["config"], "out-dir": str(Path(args.resume).resolve())})
    if state["round"] >= cfg["rounds"]:
        print(f"fl-defense: {args.resume} finished all {cfg['rounds']} rounds; nothing to resume")
        return 0
    print(f"resuming {args.resume} after round {state['round']} of {cfg['rounds']}", flush=True)
    return _status(run_experiment(cfg, Path(cfg["out-dir"]), resume=state))


def _sweep(args: argparse.Namespace) -> int:
    from fl_defense.simulations.runner import run_experiment
    from fl_defense.simulations.sweep import load_grid, run_sweep

    grid = load_grid(args.grid)
    over = tuple(k.strip() for k in args.over.split(",") if k.strip())
    overrides = parse_set(args.set)
    clash = set(overrides) & set(grid.axes)
    if clash:
        raise ConfigError(f"--set {sorted(clash)}: these keys are axes of the grid; allowed: keys not in [grid]")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.grid).stem}"
    if args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel}: allowed: an integer >= 1")
    records = run_sweep(grid, out, run_experiment, overrides, over, parallel=args.parallel)
    return 1 if any(r.status == "failed" for r in records) else 0


def _run(args: argparse.Namespace) -> int:
    from fl_defense.server.server_app import default_out_dir
    from fl_defense.simulations.runner import run_experiment

    overrides = load_toml(args.config) if args.config else {}
    overrides.update(parse_set(args.set))
    if args.out:
        overrides["out-dir"] = args.out
    if args.init_from:
        overrides["init-from"] = str(Path(args.init_from).resolve())
    _aliases_used(overrides)
    cfg = resolve(overrides)
    out_dir = default_out_dir(cfg).resolve()
    cfg["out-dir"] = str(out_dir)
    return _status(run_experiment(cfg, out_dir, replace=args.overwrite))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            load_plugins(args.plugins)
            print(describe_methods())
            return 0
        if args.command == "purify":
            from fl_defense.simulations.purify import purify

            purify(args.checkpoint, {**parse_set(args.set), "defense": args.defense},
                   Path(args.out) if args.out else None)
            return 0
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "plot":
            from fl_defense.simulations.plot import plot_folder

            print(plot_folder(Path(args.folder), Path(args.out) if args.out else None))
            return 0
        return _resume(args) if args.resume else _run(args)
    except ConfigError as exc:
        print(f"fl-defense: error: {exc}", file=sys.stderr)
        return 2


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
