"""Continuous training: a long run in which BadNets attackers come, leave and return, under five defenses.

On the default setting (Fashion-MNIST, 10 clients, 2 malicious) for `--rounds` rounds (at least 100)
with the attack windows of `--schedule`, the same run is made with:
- no defense;
- MCL every k rounds (`--every`);
- MCL at the end (the no-defense run's final model, purified once);
- shadow learning (`defense=shadow`);
- FLAME aggregation.
It prints and writes into benchmarks/README.md (between the CONTINUOUS markers) a table of final BA and
ASR, the highest ASR after the first attack window, and the durability of each attack window (rounds
from the last attacking round until ASR < 0.10, see `fl_defense.metrics.durability`), with a PNG of ASR
and BA over rounds. Runs are cached under --out like the defense table's, so an interrupted benchmark
goes on where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import provenance, write_block
from benchmarks.defense_table import federated_run, purified, run_seconds
from fl_defense.config import load_toml, schedule_rounds
from fl_defense.metrics import attack_windows, durability

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "simulations" / "configs"
DEFAULT_SCHEDULE = "window:11-30,46-55,71-75"


def runs(out: Path, rounds: int, schedule: str, every: int, overrides: dict[str, str],
         compute: bool) -> dict[str, dict[str, Any] | None]:
    """The federated runs by label; each is cached under `out`."""
    base = {**overrides, "rounds": rounds, "attack-schedule": schedule}
    return {
        "no defense": federated_run(out / "none", compute, **base),
        f"MCL every {every}": federated_run(out / f"mcl-every{every}", compute, **base, defense="mcl",
                                            **{"defense-schedule": f"every:{every}"}),
        "shadow": federated_run(out / "shadow", compute, **base, defense="shadow"),
        "FLAME": federated_run(out / "flame", compute, **base, aggregation="flame"),
    }


def fall(windows: list[dict[str, Any]]) -> str:
    """Durability of each window: rounds until ASR < 0.10, or '> observed' if it never fell."""
    return ", ".join(str(w["rounds_to_fall"]) if w["rounds_to_fall"] is not None else f"> {w['observed']}"
                     for w in windows) or "-"


def table(results: dict[str, dict[str, Any] | None], at_end: dict[str, Any] | None, scheduled: list[int],
          every: int) -> str:
    first_end = attack_windows(scheduled)[0][1] if scheduled else 0
    lines = ["| defense | final BA | final ASR | highest ASR after round "
             f"{first_end} | durability per window (rounds) | run seconds |", "|---|---|---|---|---|---|"]
    for label, res in results.items():
        if res is None:
            lines.append(f"| {label} | not run | | | | |")
            continue
        rows = res["rounds"]
        last = rows[-1]
        peak = max((r["asr"] for r in rows if r["round"] > first_end), default=float("nan"))
        lines.append(f"| {label} | {last['ba']:.4f} | {last['asr']:.4f} | {peak:.4f} | "
                     f"{fall(durability(rows, scheduled))} | {run_seconds(res):.0f} |")
    if at_end is not None:
        lines.append(f"| MCL at the end | {at_end['ba_after']:.4f} | {at_end['asr_after']:.4f} | "
                     f"(no defense until the end) | - | {at_end['seconds']:.0f} (purification) |")
    purifications = (results.get(f"MCL every {every}") or {}).get("defense", [])
    if purifications:
        worst = max(d["asr_after"] for d in purifications)
        lines += ["", f"MCL every {every}: {len(purifications)} purifications, highest ASR right after one "
                  f"{worst:.4f}; ASR before -> after: "
                  + ", ".join(f"r{d['round']} {d['asr_before']:.2f}->{d['asr_after']:.2f}" for d in purifications)]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any] | None], scheduled: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    for first, last in attack_windows(scheduled):
        for ax in (top, bottom):
            ax.axvspan(first - 0.5, last + 0.5, color="red", alpha=0.08, lw=0)
    for label, res in results.items():
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


ALWAYS = {"no defense": {}, "continuous MCL": {"defense": "mcl", "defense-schedule": "continuous"},
          "MCL every 5": {"defense": "mcl", "defense-schedule": "every:5"}, "shadow": {"defense": "shadow"},
          "FLAME": {"aggregation": "flame"}, "Multi-Krum": {"aggregation": "multikrum"},
          "FoolsGold": {"aggregation": "foolsgold"},
          "no defense (PGD attackers)": {"attack-training": "pgd"},
          "continuous MCL (PGD attackers)": {"defense": "mcl", "defense-schedule": "continuous",
                                             "attack-training": "pgd"},
          "no defense (Neurotoxin attackers)": {"attack-training": "neurotoxin"},
          "continuous MCL (Neurotoxin attackers)": {"defense": "mcl", "defense-schedule": "continuous",
                                                    "attack-training": "neurotoxin"}}


def always_runs(out: Path, rounds: int, seeds: int, methods: list[str], overrides: dict[str, Any],
                compute: bool) -> dict[str, list[dict[str, Any] | None]]:
    """The attack-always runs of `methods` (names in ALWAYS) at every seed, seed by seed, cached under `out`."""
    results: dict[str, list[dict[str, Any] | None]] = {label: [] for label in methods}
    for seed in range(seeds):
        for label in methods:
            folder = label.replace("(", "").replace(")", "").replace(" ", "-")
            settings = {**overrides, **ALWAYS[label], "rounds": rounds, "seed": seed, "attack-schedule": "always"}
            results[label].append(federated_run(out / f"{folder}-s{seed}", compute, **settings))
    return results


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


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    t = torch.tensor(values, dtype=torch.float64)
    spread = f" +/- {float(t.std()):.{digits}f}" if len(values) > 1 else ""
    return f"{float(t.mean()):.{digits}f}{spread}"


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
    was left out."""
    starts = [since.get(res["config"]["seed"], 1) for res in runs]
    after = [[r for r in res["rounds"] if r["round"] >= f] for res, f in zip(runs, starts, strict=True)]
    peak = [max(r["asr"] for r in rows) for rows in after if rows]
    share = [sum(r["asr"] > 0.05 for r in rows) / len(rows) for rows in after if rows]
    later = [rows[1:] for rows in after if len(rows) > 1 and "continuous" in rows[0]]
    secs = [sum(r["seconds"] for r in rows) / sum(r["seconds"] - r["continuous"]["defense_seconds"] for r in rows)
            for rows in later]
    until = [sum(r["continuous"]["defense_seconds"] for r in res["rounds"] if 0 < r["round"] <= f)
             for res, f in zip(runs, starts, strict=True) if "continuous" in res["rounds"][-1]]
    flagged = ", ".join(detection(res) for res in runs) if "continuous" in label else ""
    return (f"| {label} | {flagged} | {mean_std(peak)} | {mean_std(share, 3)} | "
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
             "with deployed ASR > 0.05 from then on | final BA | final ASR | defense seconds up to that round "
             "(scans) | later rounds: seconds / seconds without the defense's share | left out: precision / "
             "recall / FPR |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [always_row(label, runs, since) for label, runs in done.items() if runs]
    versions = sorted({res.get("provenance", {}).get("code_version", "?") for runs in done.values() for res in runs})
    lines += ["", f"Runs made at code version {', '.join(versions)} (each results.json's provenance); "
              f"table written by {provenance()}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "runs" / "continuous"), help="where the runs are kept")
    parser.add_argument("--rounds", type=int, default=100, help="rounds of every run")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="attack-schedule of every run")
    parser.add_argument("--every", type=int, default=10, help="k of MCL every k rounds")
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the cached runs")
    parser.add_argument("--dry", action="store_true", help="print only; write neither the README nor the PNG")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run (key=value)")
    parser.add_argument("--always", type=int, default=0, metavar="SEEDS",
                        help="instead: the attack in every round (--rounds, e.g. 40) at SEEDS seeds under --methods "
                        "(the CONTINUOUS_DEFENSE block; with --hard the hard setting's, CONTINUOUS_HARD)")
    parser.add_argument("--methods", default="no defense,continuous MCL",
                        help=f"with --always: comma-separated, of: {', '.join(ALWAYS)}")
    parser.add_argument("--hard", action="store_true", help="with --always: simulations/configs/hard.toml")
    args = parser.parse_args()
    overrides: dict[str, Any] = dict(item.split("=", 1) for item in args.set)
    out = Path(args.out)
    if args.always:
        setting = "The hard setting (simulations/configs/hard.toml)" if args.hard else "The default setting"
        if args.hard:
            overrides = {**load_toml(CONFIGS / "hard.toml"), **overrides}
        folder = out / ("always-hard" if args.hard else "always")
        results = always_runs(folder, args.rounds, args.always, args.methods.split(","), overrides,
                              not args.report_only)
        text = always_table(results, setting, args.rounds)
        print(text)
        if not args.dry:
            write_block("CONTINUOUS_HARD" if args.hard else "CONTINUOUS_DEFENSE", text)
        return
    results = runs(out, args.rounds, args.schedule, args.every, overrides, not args.report_only)
    at_end = purified(out / "none", "mcl", not args.report_only) if results["no defense"] is not None else None
    scheduled = schedule_rounds(args.schedule, args.rounds)
    text = table(results, at_end, scheduled, args.every)
    png = HERE / "continuous_rounds.png"
    text = (f"{args.rounds} rounds, `attack-schedule={args.schedule}`, BadNets, otherwise the default setting.\n\n"
            f"{text}\n\n![ASR and BA over rounds]({png.name})")
    print(text)
    if args.dry:
        return
    plot(results, scheduled, png)
    write_block("CONTINUOUS", text)


if __name__ == "__main__":
    main()
