"""BA / ASR / seconds of every defense of the project on the default federated setting, in one table.

Five parts, on the default setting (20% malicious clients); the first four for BadNets and Blended:
- `defenses`: one FedAvg run per attack; every server-side purifier is applied to that run's final
  global model with the server's clean set, so all are compared on the very same backdoored model;
- `aggregation`: one run per aggregation rule (no server-side defense);
- `poisoned`: `threat=poisoned-data` (honest clients, a third party poisoned two clients' data), one
  run per honest training code: plain SGD, ABL, DBD;
- `continuous`: MCL every 5 rounds while BadNets never stops;
- `attacks`: the other attacks (DBA, WaNet, SIG; BadNets trained with PGD, constrain-and-scale,
  Neurotoxin) without defense, and Blended and all of these but constrain-and-scale with MCL every 5
  rounds.
Runs are cached under --out and reused while their config is unchanged, so the parts can be computed
one at a time (`--parts aggregation`); the tables of every part with cached results are written to
benchmarks/README.md between the DEFENSE-TABLE markers, with a PNG of per-round BA/ASR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import NOTHING_CACHED, write_block
from fl_defense.config import resolve, schema
from fl_defense.registry import AGGREGATION_RULES
from fl_defense.simulations.purify import purify
from fl_defense.simulations.runner import run_experiment

HERE = Path(__file__).resolve().parent
ATTACKS = ("badnets", "blended")
# (attack, attack-training) of the `attacks` part; the run folder is "<attack>[-<training>]"
VARIANTS = (("dba", "plain"), ("wanet", "plain"), ("sig", "plain"), ("badnets", "pgd"),
            ("badnets", "constrain-and-scale"), ("badnets", "neurotoxin"))
MCL_EVERY = (("blended", "plain"), ("dba", "plain"), ("badnets", "neurotoxin"), ("wanet", "plain"), ("sig", "plain"),
             ("badnets", "pgd"))
DEFENSES = ("ft", "nc-unlearn", "fp", "nad", "mcl", "cnp")
AGGREGATIONS = tuple(a for a in AGGREGATION_RULES.entries if a not in ("fedavg", "fedavgm"))
CLIENT_DEFENSES = ("none", "abl", "dbd")
PARTS = ("defenses", "aggregation", "poisoned", "continuous", "attacks")
# Bulyan tolerates f malicious of n only if n >= 4f + 3: with 20% malicious, 11 clients (f = 2) is the smallest
# federation it accepts, so its row is measured there (all 11 sampled each round).
RULE_SETTINGS: dict[str, dict[str, Any]] = {"bulyan": {"num-clients": 11, "clients-per-round": 11}}


# Keys that only matter when a given method is selected: a cached run stays valid when they change
# while the method is not in use (e.g. a new ABL default does not invalidate a FedAvg run).
SCOPED: dict[str, tuple[str, str]] = {
    "abl-": ("client-defense", "abl"), "dbd-": ("client-defense", "dbd"), "cnp-": ("defense", "cnp"),
    "flame-": ("aggregation", "flame"), "foolsgold-": ("aggregation", "foolsgold"), "rlr-": ("aggregation", "rlr"),
    "normclip-": ("aggregation", "normclip"), "dp-": ("aggregation", "dp-clip"), "shadow-": ("defense", "shadow"),
    "dba-": ("attack", "dba"), "wanet-": ("attack", "wanet"), "sig-": ("attack", "sig"),
    "pgd-": ("attack-training", "pgd"), "cs-": ("attack-training", "constrain-and-scale"),
    "neurotoxin-": ("attack-training", "neurotoxin"),
}


NOT_RESULTS = ("out-dir", "eval-batch-size")  # where a run is written and how fast it is evaluated, not what it computes


def _in_use(key: str, cfg: dict[str, Any]) -> bool:
    for prefix, (selector, method) in SCOPED.items():
        if key.startswith(prefix):
            return cfg[selector] == method
    return key not in NOT_RESULTS


def same_config(saved: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """A cached result is valid if its config equals `cfg` on every key in use, new keys counting at defaults."""
    return set(saved) <= set(cfg) and all(saved.get(k, schema()[k].default) == v for k, v in cfg.items()
                                          if _in_use(k, cfg))


def cached(path: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if same_config(result["config"], cfg) else None


def federated_run(out: Path, compute: bool, **overrides: Any) -> dict[str, Any] | None:
    """The run's results: cached, computed now (when `compute`), or None."""
    cfg = resolve({**overrides, "out-dir": str(out)})
    result = cached(out / "results.json", cfg)
    if result is not None and result["rounds"][-1]["round"] != cfg["rounds"]:
        result = None  # an interrupted run: results.json is rewritten every round
    if result is None and compute:
        result = run_experiment(cfg, out)
    return result


def purified(run_dir: Path, defense: str, compute: bool) -> dict[str, Any] | None:
    """A purifier's record on the run's final model: cached, computed now (when `compute`), or None."""
    out = run_dir / f"purify-{defense}"
    checkpoint = run_dir / "checkpoints" / "final.pt"
    saved = json.loads((run_dir / "results.json").read_text())["config"]
    saved.pop("out-dir", None)
    cfg = resolve({**saved, "defense": defense})
    record = cached(out / "purify.json", cfg)
    if record is None and compute:
        record = purify(str(checkpoint), {"defense": defense}, out)
    return record


def final(res: dict[str, Any]) -> tuple[float, float]:
    last = res["rounds"][-1]
    return last["ba"], last["asr"]


def run_seconds(res: dict[str, Any]) -> float:
    return sum(r.get("seconds", 0.0) + r.get("eval_seconds", 0.0) for r in res["rounds"])


def aggregation_seconds(res: dict[str, Any]) -> str:
    """Seconds the server spent in the aggregation rule itself, summed over the run."""
    times = [(row.get("aggregation") or {}).get("seconds") for row in res["rounds"] if row["round"] > 0]
    return f"{sum(times):.1f}" if times and None not in times else "-"


def excluded_malicious(res: dict[str, Any]) -> str:
    """How often the aggregation rule left out the attackers' updates, where the rule reports exclusions."""
    kept = total = 0
    seen = False
    for row in res["rounds"]:
        info = row.get("aggregation") or {}
        if "excluded" not in info:
            continue
        seen = True
        attackers = set(row.get("attackers", []))
        total += len(attackers)
        kept += len(attackers & set(info["excluded"]))
    return f"{kept}/{total}" if seen else "-"


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(runs))
    rows_n = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, (name, res) in zip(axes.flat, runs.items(), strict=False):
        rounds = [r["round"] for r in res["rounds"]]
        ax.plot(rounds, [r["ba"] for r in res["rounds"]], label="BA")
        ax.plot(rounds, [r["asr"] for r in res["rounds"]], label="ASR")
        for rec in res.get("defense", []):
            ax.axvline(rec["round"], color="grey", lw=0.6, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def build_tables(out: Path, parts: set[str], attacks: set[str],
                 overrides: dict[str, str]) -> tuple[str, dict[str, dict[str, Any]]]:
    """Compute the runs of `parts` x `attacks` that are not cached; render every run that is available."""
    lines: list[str] = []
    curves: dict[str, dict[str, Any]] = {}
    def computing(part: str, attack: str) -> bool:
        return part in parts and attack in attacks

    base = {a: federated_run(out / a, computing("defenses", a) or computing("aggregation", a), **overrides,
                             attack=a) for a in ATTACKS}

    rows = []
    for attack, res in base.items():
        if res is None:
            continue
        curves[f"{attack}, FedAvg, no defense"] = res
        ba, asr = final(res)
        rows.append(f"| {attack} | none | {ba:.4f} | {asr:.4f} | - | - |")
        for defense in DEFENSES:
            rec = purified(out / attack, defense, computing("defenses", attack))
            if rec is None:
                rows.append(f"| {attack} | {defense} | not run | | | |")
                continue
            rows.append(f"| {attack} | {defense} | {rec['ba_after']:.4f} | {rec['asr_after']:.4f} | "
                        f"{rec['seconds']:.1f} | {rec.get('flagged', '-')} |")
    if rows:
        lines += ["### Server-side defenses (FedAvg, final global model)", "",
                  "| attack | defense | BA | ASR | seconds | flagged |", "|---|---|---|---|---|---|", *rows, ""]

    rows = []
    for attack, res in base.items():
        if res is None:
            continue
        ba, asr = final(res)
        rows.append(f"| {attack} | fedavg | {ba:.4f} | {asr:.4f} | {aggregation_seconds(res)} | "
                    f"{run_seconds(res):.0f} | - |")
        for rule in AGGREGATIONS:
            setting = RULE_SETTINGS.get(rule, {})
            r = federated_run(out / f"{attack}-agg-{rule}", computing("aggregation", attack), **overrides, attack=attack,
                              aggregation=rule, **setting)
            name = rule + "".join(f", {k} {v}" for k, v in setting.items() if k == "num-clients")
            if r is None:
                rows.append(f"| {attack} | {name} | not run | | | | |")
                continue
            ba, asr = final(r)
            rows.append(f"| {attack} | {name} | {ba:.4f} | {asr:.4f} | {aggregation_seconds(r)} | "
                        f"{run_seconds(r):.0f} | {excluded_malicious(r)} |")
            if rule == "flame":
                curves[f"{attack}, FLAME"] = r
    if rows:
        lines += ["### Aggregation rules (no server-side defense)", "",
                  "| attack | aggregation | BA | ASR | aggregation seconds | run seconds | attacker updates excluded |",
                  "|---|---|---|---|---|---|---|", *rows, ""]

    rows = []
    for attack in ATTACKS:
        for cd in CLIENT_DEFENSES:
            r = federated_run(out / f"{attack}-poisoned-{cd}", computing("poisoned", attack), **overrides, attack=attack,
                              threat="poisoned-data", **{"client-defense": cd})
            if r is None:
                rows.append(f"| {attack} | {cd} | not run | | |")
                continue
            ba, asr = final(r)
            rows.append(f"| {attack} | {cd} | {ba:.4f} | {asr:.4f} | {run_seconds(r):.0f} |")
            if cd != "none":
                curves[f"{attack}, poisoned data, {cd.upper()}"] = r
    if rows:
        lines += ["### Poisoned data, honest clients (`threat=poisoned-data`)", "",
                  "| attack | client-defense | BA | ASR | run seconds |", "|---|---|---|---|---|", *rows, ""]

    lines += attack_tables(out, parts, attacks, overrides, curves)

    every = federated_run(out / "badnets-mcl-every5", computing("continuous", "badnets"), **overrides, attack="badnets",
                          defense="mcl", **{"defense-schedule": "every:5"})
    if every is not None:
        curves["badnets, MCL every 5 rounds"] = every
        lines += ["### MCL every 5 rounds, BadNets attacking in every round", "",
                  "BA / ASR before -> after each purification:", ""]
        lines += [f"- round {r['round']}: flagged {r.get('flagged')}, trigger: "
                  f"{r.get('trigger_source') or 'none, not purified'}, BA {r['ba_before']:.4f} -> "
                  f"{r['ba_after']:.4f}, ASR {r['asr_before']:.4f} -> {r['asr_after']:.4f}"
                  for r in every["defense"]]
        lines.append("")
    return "\n".join(lines), curves


def variant_name(attack: str, training: str) -> str:
    return attack if training == "plain" else f"{attack}-{training}"


def piece_asr(res: dict[str, Any]) -> str:
    """The final round's ASR of each DBA piece alone, where the attack has pieces."""
    pieces = res["rounds"][-1].get("asr_pieces") or {}
    return ", ".join(f"{v:.2f}" for v in pieces.values()) or "-"


def attack_tables(out: Path, parts: set[str], attacks: set[str], overrides: dict[str, str],
                  curves: dict[str, dict[str, Any]]) -> list[str]:
    """The `attacks` part: each attack without defense, and some with MCL every 5 rounds."""
    rows = []
    for attack, training in VARIANTS:
        name = variant_name(attack, training)
        r = federated_run(out / name, "attacks" in parts and attack in attacks, **overrides, attack=attack,
                          **{"attack-training": training})
        if r is None:
            rows.append(f"| {attack} | {training} | not run | | | | |")
            continue
        ba, asr = final(r)
        peak = max(row["asr"] for row in r["rounds"])
        rows.append(f"| {attack} | {training} | {ba:.4f} | {asr:.4f} | {peak:.4f} | {piece_asr(r)} | "
                    f"{run_seconds(r):.0f} |")
    lines = []
    if rows:
        lines += ["### Attacks without defense (FedAvg)", "",
                  "| attack | attack-training | BA | ASR | highest ASR | ASR per DBA piece | run seconds |",
                  "|---|---|---|---|---|---|---|", *rows, ""]
    rows = []
    for attack, training in MCL_EVERY:
        name = variant_name(attack, training)
        r = federated_run(out / f"{name}-mcl-every5", "attacks" in parts and attack in attacks, **overrides,
                          attack=attack, defense="mcl", **{"attack-training": training, "defense-schedule": "every:5"})
        if r is None:
            rows.append(f"| {attack} | {training} | not run | | |")
            continue
        curves[f"{name}, MCL every 5 rounds"] = r
        after = ", ".join(f"{d['asr_before']:.2f} -> {d['asr_after']:.3f}" for d in r["defense"])
        ba, asr = final(r)
        rows.append(f"| {attack} | {training} | {after} | {ba:.4f} | {asr:.4f} |")
    if rows:
        lines += ["### Attacks with MCL every 5 rounds (rounds 5, 10, 15, 20)", "",
                  "| attack | attack-training | ASR before -> after each purification | final BA | final ASR |",
                  "|---|---|---|---|---|", *rows, ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "runs"), help="where the federated runs are kept")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to compute if not cached: {', '.join(PARTS)}")
    parser.add_argument("--attacks", default=",".join(sorted(set(ATTACKS) | {a for a, _ in VARIANTS})),
                        help="comma-separated attacks to compute runs for")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run (key=value)")
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the cached runs")
    args = parser.parse_args()
    parts = set() if args.report_only else {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    attacks = {a.strip() for a in args.attacks.split(",") if a.strip()}
    known = set(ATTACKS) | {a for a, _ in VARIANTS}
    if attacks - known:
        parser.error(f"unknown attacks {sorted(attacks - known)}; allowed: {', '.join(sorted(known))}")
    overrides = dict(item.split("=", 1) for item in args.set)
    table, curves = build_tables(Path(args.out), parts, attacks, overrides)
    if not curves:
        print(f"no finished run under {args.out}: nothing to report, the block is left as it is")
        sys.exit(NOTHING_CACHED)
    plot(curves, HERE / "defense_rounds.png")
    table += "\n![per-round BA/ASR](defense_rounds.png)"
    print(table)
    write_block("DEFENSE-TABLE", table)


if __name__ == "__main__":
    main()
