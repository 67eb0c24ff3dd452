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

from benchmarks.common import write_block
from benchmarks.defense_table import federated_run, purified, run_seconds
from fl_defense.config import schedule_rounds
from fl_defense.metrics import attack_windows, durability

HERE = Path(__file__).resolve().parent
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "runs" / "continuous"), help="where the runs are kept")
    parser.add_argument("--rounds", type=int, default=100, help="rounds of every run")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="attack-schedule of every run")
    parser.add_argument("--every", type=int, default=10, help="k of MCL every k rounds")
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the cached runs")
    parser.add_argument("--dry", action="store_true", help="print only; write neither the README nor the PNG")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run (key=value)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    out = Path(args.out)
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
