"""Continuous training: long runs in which BadNets attackers come and go, or never stop, under every defense.

Windows (the default): on the default setting (Fashion-MNIST, 10 clients, 2 malicious) for `--rounds` rounds (at
least 100) with the attack windows of `--schedule`, the same run at `--seeds` seeds under `--methods` (no defense,
MCL every 5 rounds, the continuous defense (also with warm warp scans, and scanning every 2nd round), shadow
learning, FLAME, Multi-Krum, FoolsGold), and MCL once at the end of the no-defense run. It prints and writes into
benchmarks/README.md (between the CONTINUOUS markers) final BA and ASR, the highest deployed ASR from the continuous
defense's first detection, the durability of each attack window (rounds from the last attacking round until ASR <
0.10, see `fl_defense.metrics.durability`), the run's seconds and the continuous defense's share of them, with a PNG
of ASR and BA over rounds (seed 0).
`--block CONTINUOUS_REMADE` writes the windows table into that block instead (some methods made again at newer
code, beside the full table). `--always SEEDS`: the attack in every round, on the default or (`--hard`) the hard
setting (the CONTINUOUS_DEFENSE and CONTINUOUS_HARD blocks). Runs are cached under --out, so an interrupted
benchmark goes on where it stopped; run a method's seeds in one call and the others in another, then
`--report-only` with every method, and the table says which methods have fewer seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import NOTHING_CACHED, mean_std, provenance, write_block
from benchmarks.defense_table import federated_run, purified, run_seconds
from fl_defense.config import load_toml, schedule_rounds
from fl_defense.metrics import attack_windows, durability

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "simulations" / "configs"
DEFAULT_SCHEDULE = "window:11-30,46-55,71-75"


def fall(windows: list[dict[str, Any]]) -> str:
    """Durability of each window: rounds until ASR < 0.10, or '> observed' if it never fell."""
    return ", ".join(str(w["rounds_to_fall"]) if w["rounds_to_fall"] is not None else f"> {w['observed']}"
                     for w in windows) or "-"


def plot(results: dict[str, list[dict[str, Any] | None]], scheduled: list[int], path: Path) -> None:
    """ASR and BA over rounds of each method's seed-0 run, attack windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for first, last in attack_windows(scheduled):
        for ax in (top, bottom):
            ax.axvspan(first - 0.5, last + 0.5, color="red", alpha=0.08, lw=0)
    for label, runs in results.items():
        res = runs[0] if runs else None
        if res is None:
            continue
        rounds = [r["round"] for r in res["rounds"]]
        top.plot(rounds, [r["asr"] for r in res["rounds"]], label=label, lw=1.2)
        bottom.plot(rounds, [r["ba"] for r in res["rounds"]], label=label, lw=1.2)
    top.set_ylabel("ASR")
    top.set_ylim(-0.02, 1.02)
    top.axhline(0.1, color="grey", lw=0.6, ls=":")
    bottom.set_ylabel("BA")
    bottom.set_xlabel("round (attack windows shaded)")
    top.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# The default until 2026-12-07 (#14): a scan every round, no watch, no re-test.
EVERY_ROUND = {"continuous-scan-max-gap": 1, "continuous-watch-z": 0.0, "continuous-retest": False}
METHODS = {"no defense": {}, "no attack (clean floor)": {"malicious-fraction": 0.0},
          "continuous MCL": {"defense": "mcl", "defense-schedule": "continuous"},
          "continuous MCL (no attack)": {"defense": "mcl", "defense-schedule": "continuous", "malicious-fraction": 0.0},
          "continuous MCL (a scan every round)": {"defense": "mcl", "defense-schedule": "continuous", **EVERY_ROUND},
          "continuous MCL (warm warp scans)": {"defense": "mcl", "defense-schedule": "continuous",
                                               "warp-warm-epochs": 1, **EVERY_ROUND},
          "continuous MCL (scans every 2 rounds)": {"defense": "mcl", "defense-schedule": "continuous",
                                                    "continuous-scan-every": 2, **EVERY_ROUND},
          "continuous MCL (back-off to 4 rounds without watch)": {"defense": "mcl", "defense-schedule": "continuous",
                                                              "continuous-scan-max-gap": 4, "continuous-watch-z": 0.0,
                                                              "continuous-retest": False},
          "continuous MCL (back-off to 2 rounds without watch)": {"defense": "mcl", "defense-schedule": "continuous",
                                                              "continuous-scan-max-gap": 2, "continuous-watch-z": 0.0,
                                                              "continuous-retest": False},
          "MCL every 5": {"defense": "mcl", "defense-schedule": "every:5"}, "shadow": {"defense": "shadow"},
          "FLAME": {"aggregation": "flame"}, "Multi-Krum": {"aggregation": "multikrum"},
          "FoolsGold": {"aggregation": "foolsgold"},
          "no defense (PGD attackers)": {"attack-training": "pgd"},
          "continuous MCL (PGD attackers)": {"defense": "mcl", "defense-schedule": "continuous",
                                             "attack-training": "pgd"},
          "no defense (Neurotoxin attackers)": {"attack-training": "neurotoxin"},
          "continuous MCL (Neurotoxin attackers)": {"defense": "mcl", "defense-schedule": "continuous",
                                                    "attack-training": "neurotoxin"}}
WINDOW_METHODS = ("no defense", "MCL every 5", "continuous MCL", "continuous MCL (warm warp scans)",
                  "continuous MCL (scans every 2 rounds)", "shadow", "FLAME", "Multi-Krum", "FoolsGold")
ALWAYS_METHODS = ("no defense", "continuous MCL")


def method_runs(out: Path, rounds: int, schedule: str, seeds: int, methods: list[str], overrides: dict[str, Any],
                compute: bool) -> dict[str, list[dict[str, Any] | None]]:
    """The runs of `methods` (names in METHODS) at every seed, seed by seed, cached under `out`."""
    results: dict[str, list[dict[str, Any] | None]] = {label: [] for label in methods}
    for seed in range(seeds):
        for label in methods:
            folder = label.replace("(", "").replace(")", "").replace(" ", "-")
            settings = {**overrides, **METHODS[label], "rounds": rounds, "seed": seed, "attack-schedule": schedule}
            results[label].append(federated_run(out / f"{folder}-s{seed}", compute, **settings))
    return results


def nothing_cached(runs: dict[str, list[dict[str, Any] | None]], folder: Path) -> None:
    """Leave (exit status NOTHING_CACHED, the block kept) when no run is there to report, as `--report-only` on a
    fresh clone finds."""
    if not any(res is not None for results in runs.values() for res in results):
        print(f"no finished run under {folder}: nothing to report, the block is left as it is")
        sys.exit(NOTHING_CACHED)


def first_detection(res: dict[str, Any]) -> int | None:
    """The first round in which the continuous defense knew the true target (None: never, or not that defense)."""
    target = res["config"]["target-label"]
    return next((r["round"] for r in res["rounds"] if target in r.get("continuous", {}).get("labels", [])), None)


def detection(res: dict[str, Any]) -> str:
    """The round of `first_detection`, or '-' and what the defense flagged instead, and from when."""
    found = first_detection(res)
    if found is not None:
        return str(found)
    wrong = next((r for r in res["rounds"] if r.get("continuous", {}).get("labels")), None)
    return "-" if wrong is None else f"- (labels {wrong['continuous']['labels']} from {wrong['round']})"


def filtering_rates(runs: list[dict[str, Any]]) -> str:
    """Precision / recall / FPR over each run of whatever left clients out (the screen, the shadow, the rule)."""
    found = [next((f[k] for k in ("continuous", "shadow", "aggregation") if k in (f := res.get("filtering", {}))), None)
             for res in runs]
    return " / ".join(mean_std([f[k] for f in found if f and f[k] is not None], 3)
                      for k in ("precision", "recall", "fpr"))


def always_row(label: str, runs: list[dict[str, Any]], since: dict[int, int]) -> str:
    """One defense's line over its seeds, from the round the continuous defense first knew the target (`since`,
    by seed; round 1 at a seed it has not run): deployed ASR, final BA/ASR, the continuous defense's cost (a
    round's seconds over the same round's seconds less the defense's share, measured in the same run) and who
    was left out. The share of rounds above 0.05 is also given for ASR beyond clean, the trigger's own part of ASR
    (`fl_defense.metrics.measure`), over the runs that recorded it."""
    starts = [since.get(res["config"]["seed"], 1) for res in runs]
    after = [[r for r in res["rounds"] if r["round"] >= f] for res, f in zip(runs, starts, strict=True)]
    peak = [max(r["asr"] for r in rows) for rows in after if rows]
    share = [sum(r["asr"] > 0.05 for r in rows) / len(rows) for rows in after if rows]
    own = [sum(r["asr_beyond_clean"] > 0.05 for r in rows) / len(rows) for rows in after
           if rows and all("asr_beyond_clean" in r for r in rows)]
    later = [rows[1:] for rows in after if len(rows) > 1 and "continuous" in rows[0]]
    secs = [sum(r["seconds"] for r in rows) / sum(r["seconds"] - r["continuous"]["defense_seconds"] for r in rows)
            for rows in later]
    until = [sum(r["continuous"]["defense_seconds"] for r in res["rounds"] if 0 < r["round"] <= f)
             for res, f in zip(runs, starts, strict=True) if "continuous" in res["rounds"][-1]]
    flagged = ", ".join(detection(res) for res in runs) if "continuous" in label else ""
    return (f"| {label} | {flagged} | {mean_std(peak)} | {mean_std(share, 3)} | {mean_std(own, 3)} | "
            f"{mean_std([res['rounds'][-1]['ba'] for res in runs])} | "
            f"{mean_std([res['rounds'][-1]['asr'] for res in runs])} | {mean_std(until, 1)} | {mean_std(secs, 2)} | "
            f"{filtering_rates(runs)} |")


def always_table(results: dict[str, list[dict[str, Any] | None]], setting: str, rounds: int) -> str:
    """The table over the seeds each method has finished; "from then on" is from the continuous defense's first
    detection at the same seed (round 1 where it has none or has not run)."""
    seeds = max(sum(r is not None for r in runs) for runs in results.values())
    done = {label: [r for r in runs if r is not None] for label, runs in results.items()}
    since = {res["config"]["seed"]: first_detection(res) or 1 for res in done.get("continuous MCL", [])}
    counts = ", ".join(f"{label} {len(runs)}" for label, runs in done.items() if len(runs) < seeds)
    lines = [f"{setting}, {rounds} rounds, BadNets attacking in every round; mean +/- std over {seeds} seeds"
             + (f" (fewer for: {counts})" if counts else "") + ". "
             "\"From then on\": from the round in which the continuous defense first knew the target (at the same "
             "seed), for every method.", "",
             "| defense | target flagged in round (per seed) | highest deployed ASR from then on | share of rounds "
             "with deployed ASR > 0.05 from then on | the same for ASR beyond clean (the trigger's own part) | "
             "final BA | final ASR | defense seconds up to that round (scans) | later rounds: seconds / seconds "
             "without the defense's share | left out: precision / recall / FPR |", "|---" * 10 + "|"]
    lines += [always_row(label, runs, since) for label, runs in done.items() if runs]
    versions = sorted({res.get("provenance", {}).get("code_version", "?") for runs in done.values() for res in runs})
    lines += ["", f"Runs made at code version {', '.join(versions)} (each results.json's provenance); "
              f"table written by {provenance()}"]
    return "\n".join(lines)


def windows_row(label: str, runs: list[dict[str, Any]], since: dict[int, int], scheduled: list[int]) -> str:
    """One method's line over its seeds in the run with attack windows: final BA/ASR, the highest deployed ASR from
    the continuous defense's first detection at the same seed (the first attacked round where it has not run) and
    from the first attacked round (what a later detection let through), each
    seed's durability per window, the run's seconds and the continuous defense's share of them. A variant of the
    continuous defense is measured from its own first detection."""
    first = scheduled[0] if scheduled else 1
    starts = [(first_detection(res) if "continuous" in label else None) or since.get(res["config"]["seed"], first)
              for res in runs]
    peak = [max(r["asr"] for r in res["rounds"] if r["round"] >= f) for res, f in zip(runs, starts, strict=True)]
    attacked = [max(r["asr"] for r in res["rounds"] if r["round"] >= first) for res in runs]
    defended = [[r for r in res["rounds"] if "continuous" in r] for res in runs]
    share = [sum(r["seconds"] for r in rows) / sum(r["seconds"] - r["continuous"]["defense_seconds"] for r in rows)
             for rows in defended if rows]
    flagged = ", ".join(detection(res) for res in runs) if "continuous" in label else ""
    return (f"| {label} | {flagged} | {mean_std([res['rounds'][-1]['ba'] for res in runs])} | "
            f"{mean_std([res['rounds'][-1]['asr'] for res in runs])} | {mean_std(peak)} | {mean_std(attacked)} | "
            f"{'; '.join(fall(durability(res['rounds'], scheduled)) for res in runs)} | "
            f"{mean_std([run_seconds(res) for res in runs], 0)} | {mean_std(share, 2)} | {filtering_rates(runs)} |")


def windows_table(results: dict[str, list[dict[str, Any] | None]], at_end: dict[str, Any] | None,
                  scheduled: list[int], header: str) -> str:
    """The run with attack windows over the seeds each method has finished, MCL once at the end of the seed-0 run
    without a defense, and the purifications of MCL every k at seed 0."""
    seeds = max(sum(r is not None for r in runs) for runs in results.values())
    done = {label: [r for r in runs if r is not None] for label, runs in results.items()}
    since = {res["config"]["seed"]: first_detection(res) or scheduled[0] for res in done.get("continuous MCL", [])}
    counts = ", ".join(f"{label} {len(runs)}" for label, runs in done.items() if len(runs) < seeds)
    lines = [f"{header}; mean +/- std over {seeds} seeds" + (f" (fewer for: {counts})" if counts else "") + ". "
             "\"From the first detection\": from the round in which the continuous defense first knew the target (at "
             "the same seed), for every method; from the first attacked round where it has not run.", "",
             "| defense | target flagged in round (per seed) | final BA | final ASR | highest deployed ASR from the "
             "first detection | the same from the first attacked round | durability per window, rounds (per seed) | "
             "run seconds | seconds / seconds without the defense's share | left out: precision / recall / FPR |",
             "|---" * 10 + "|"]
    lines += [windows_row(label, runs, since, scheduled) for label, runs in done.items() if runs]
    if at_end is not None:
        lines.append(f"| MCL at the end (seed 0) | | {at_end['ba_after']:.4f} | {at_end['asr_after']:.4f} | (no "
                     f"defense until the end) | | - | {at_end['seconds']:.0f} (purification) | | |")
    for label, runs in done.items():
        purifications = runs[0].get("defense", []) if label.startswith("MCL every") and runs else []
        if purifications:
            lines += ["", f"{label}, seed 0: {len(purifications)} purifications, highest ASR right after one "
                      f"{max(d['asr_after'] for d in purifications):.4f}; ASR before -> after: "
                      + ", ".join(f"r{d['round']} {d['asr_before']:.2f}->{d['asr_after']:.2f}" for d in purifications)]
    versions = sorted({res.get("provenance", {}).get("code_version", "?") for runs in done.values() for res in runs})
    lines += ["", f"Runs made at code version {', '.join(versions)} (each results.json's provenance); "
              f"table written by {provenance()}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "runs" / "continuous"), help="where the runs are kept")
    parser.add_argument("--rounds", type=int, default=100, help="rounds of every run")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="attack-schedule of the runs with windows")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the runs with windows")
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the cached runs")
    parser.add_argument("--dry", action="store_true", help="print only; write neither the README nor the PNG")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run (key=value)")
    parser.add_argument("--always", type=int, default=0, metavar="SEEDS",
                        help="instead: the attack in every round (--rounds, e.g. 40) at SEEDS seeds under --methods "
                        "(the CONTINUOUS_DEFENSE block; with --hard the hard setting's, CONTINUOUS_HARD)")
    parser.add_argument("--methods", help=f"comma-separated, of: {', '.join(METHODS)} (default: the first "
                        f"{len(WINDOW_METHODS)}; with --always, {', '.join(ALWAYS_METHODS)})")
    parser.add_argument("--hard", action="store_true", help="with --always: simulations/configs/hard.toml")
    parser.add_argument("--block", default="CONTINUOUS", choices=("CONTINUOUS", "CONTINUOUS_REMADE"),
                        help="the windows table's block in benchmarks/README.md (CONTINUOUS_REMADE: some methods made "
                        "again at newer code beside the full table; its PNG named after it)")
    args = parser.parse_args()
    overrides: dict[str, Any] = dict(item.split("=", 1) for item in args.set)
    out, compute = Path(args.out), not args.report_only
    methods = args.methods.split(",") if args.methods else list(ALWAYS_METHODS if args.always else WINDOW_METHODS)
    if args.always:
        setting = "The hard setting (simulations/configs/hard.toml)" if args.hard else "The default setting"
        if args.hard:
            overrides = {**load_toml(CONFIGS / "hard.toml"), **overrides}
        folder = out / ("always-hard" if args.hard else "always")
        runs = method_runs(folder, args.rounds, "always", args.always, methods, overrides, compute)
        nothing_cached(runs, folder)
        text = always_table(runs, setting, args.rounds)
        print(text)
        if not args.dry:
            write_block("CONTINUOUS_HARD" if args.hard else "CONTINUOUS_DEFENSE", text)
        return
    folder = out / "windows"
    results = method_runs(folder, args.rounds, args.schedule, args.seeds, methods, overrides, compute)
    nothing_cached(results, folder)
    baseline = results.get("no defense", [None])[0]
    at_end = purified(folder / "no-defense-s0", baseline, "mcl", compute) if baseline is not None else None
    scheduled = schedule_rounds(args.schedule, args.rounds)
    png = HERE / ("continuous_rounds.png" if args.block == "CONTINUOUS" else f"{args.block.lower()}_rounds.png")
    text = windows_table(results, at_end, scheduled, f"{args.rounds} rounds, `attack-schedule={args.schedule}`, "
                         "BadNets, otherwise the default setting")
    text += f"\n\n![ASR and BA over rounds, seed 0]({png.name})"
    print(text)
    if args.dry:
        return
    plot(results, scheduled, png)
    write_block(args.block, text)


if __name__ == "__main__":
    main()
