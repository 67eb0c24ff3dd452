"""BA / ASR / seconds of every server-side defense on the default federated setting, in the same runs.

For each attack (BadNets, Blended) one federated run trains the default setting through Flower + Ray;
every purifier is then applied to that run's final global model with the server's clean set, so
all defenses are compared on the very same backdoored model. A third run purifies with MCL every
5 rounds while the attack never stops. Writes a markdown table and a PNG of per-round BA/ASR, and
puts both into benchmarks/README.md between the DEFENSE-TABLE markers.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from fl_defense.config import resolve
from simulations.purify import purify
from simulations.runner import run_experiment

HERE = Path(__file__).resolve().parent
DEFENSES = ("none", "ft", "nc-unlearn", "fp", "nad", "mcl")
MARK = ("<!-- DEFENSE-TABLE:BEGIN -->", "<!-- DEFENSE-TABLE:END -->")


def federated_run(out: Path, **overrides: Any) -> dict[str, Any]:
    cfg = resolve({**overrides, "out-dir": str(out)})
    results_file = out / "results.json"
    if results_file.is_file() and json.loads(results_file.read_text())["config"] == cfg:
        return json.loads(results_file.read_text())
    return run_experiment(cfg, out)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, res) in zip(axes[0], runs.items(), strict=True):
        rounds = [r["round"] for r in res["rounds"]]
        ax.plot(rounds, [r["ba"] for r in res["rounds"]], label="BA")
        ax.plot(rounds, [r["asr"] for r in res["rounds"]], label="ASR")
        for rec in res.get("defense", []):
            ax.axvline(rec["round"], color="grey", lw=0.6, ls=":")
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(HERE / "runs"), help="where the federated runs are kept")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run (key=value)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    out = Path(args.out)
    rows, runs = [], {}
    for attack in ("badnets", "blended"):
        res = federated_run(out / attack, **overrides, attack=attack)
        runs[f"{attack}, no defense"] = res
        checkpoint = out / attack / "checkpoints" / "final.pt"
        last = res["rounds"][-1]
        rows.append((attack, "none", last["ba"], last["asr"], 0.0, "-"))
        for defense in DEFENSES[1:]:
            rec = purify(str(checkpoint), {"defense": defense}, out / attack / f"purify-{defense}")
            flagged = rec.get("flagged")
            rows.append((attack, defense, rec["ba_after"], rec["asr_after"], rec["seconds"],
                         "-" if flagged is None else str(flagged)))
    every = federated_run(out / "badnets-mcl-every5", **overrides, attack="badnets", defense="mcl",
                          **{"defense-schedule": "every:5"})
    runs["badnets, MCL every 5 rounds"] = every
    plot(runs, HERE / "defense_rounds.png")

    lines = ["| attack | defense | BA | ASR | seconds | flagged |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {d} | {ba:.4f} | {asr:.4f} | {s:.1f} | {f} |" for a, d, ba, asr, s, f in rows]
    lines += ["", "MCL every 5 rounds, BadNets attacking in every round (BA / ASR before -> after each purification):", ""]
    lines += [f"- round {r['round']}: flagged {r.get('flagged')}, trigger: {r.get('trigger_source') or 'none, not purified'}, "
              f"BA {r['ba_before']:.4f} -> {r['ba_after']:.4f}, ASR {r['asr_before']:.4f} -> {r['asr_after']:.4f}"
              for r in every["defense"]]
    lines += ["", "![per-round BA/ASR](defense_rounds.png)"]
    table = "\n".join(lines)
    print(table)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.is_file() else f"# Benchmarks\n\n{MARK[0]}\n{MARK[1]}\n"
    pattern = re.compile(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), re.S)
    readme.write_text(pattern.sub(lambda _: f"{MARK[0]}\n{table}\n{MARK[1]}", text))


if __name__ == "__main__":
    main()
