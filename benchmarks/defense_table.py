"""BA / ASR / seconds of every defense of the project on the default federated setting, in one table.

Six parts, on the default setting (20% malicious clients); all but `attacks` for BadNets and Blended:
- `defenses`: one FedAvg run per attack; every server-side purifier is applied to that run's final
  global model with the server's clean set, so all are compared on the very same backdoored model;
- `aggregation`: one run per aggregation rule (no server-side defense);
- `poisoned`: `threat=poisoned-data` (honest clients, a third party poisoned two clients' data), one
  run per honest training code and seed: plain SGD, ABL, DBD;
- `continuous`: MCL every 5 rounds while BadNets never stops;
- `attacks`: the other attacks (DBA, WaNet, SIG; BadNets trained with PGD, constrain-and-scale,
  Neurotoxin) without defense, and Blended and all of these but constrain-and-scale with MCL every 5
  rounds;
- `models`: the `defenses` part's FedAvg run, and MCL and CNP at the end, with `model=wrn16-1` (the MCL
  paper's WRN-16-1), for BadNets also with attackers training 5 local epochs; about 17-25 and 37 minutes per run
  here against 2.5 for the small CNN, and about 5 minutes per MCL against 40 s;
- `centralised`: the papers' setting as the control of the federated one (simulations/configs/centralised.toml:
  one honest client holding the training data, 10% of it poisoned, a round is an epoch): the client trains with
  no defense, ABL or DBD, and MCL and CNP purify the no-defense run's final model; each system's BA drop is
  against the no-defense run of the same seed.
Runs are cached under --out and reused while their config is unchanged, so the parts can be computed
one at a time (`--parts aggregation`). Each part has its own block in benchmarks/README.md (BLOCKS), written
when the part has a cached run and left as it is otherwise, so computing or re-rendering one part never
touches another's table; the PNG of per-round BA/ASR is redrawn when every part is rendered.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.common import NOTHING_CACHED, mean_std, provenance, write_block
from fl_defense.config import FORMER_DEFAULTS, load_toml, resolve, schema
from fl_defense.purification import build_purifier
from fl_defense.registry import AGGREGATION_RULES, PURIFIERS, TRIGGER_SOURCES
from fl_defense.screening import partly_singles_out
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
PARTS = ("defenses", "aggregation", "poisoned", "continuous", "attacks", "models", "centralised")
BLOCKS = {"defenses": "DEFENSE-TABLE-DEFENSES", "aggregation": "DEFENSE-TABLE-AGGREGATION",
          "poisoned": "DEFENSE-TABLE-POISONED", "continuous": "DEFENSE-TABLE-CONTINUOUS",
          "attacks": "DEFENSE-TABLE-ATTACKS", "models": "DEFENSE-TABLE-MODELS",
          "centralised": "DEFENSE-TABLE-CENTRALISED"}
CENTRALISED = HERE.parent / "simulations" / "configs" / "centralised.toml"
CENTRAL_PURIFIERS = ("mcl", "cnp")
# Seeds of a centralised client defense where fewer than --seeds: a centralised DBD run takes about 12 minutes here
# (SimCLR rounds 33 s, MixMatch rounds 40 s, on the 57,000 images; measured 2026-12-06), so it has seed 0 only.
CENTRAL_SEEDS = {"dbd": 1}
# The paper models of the `models` part (ResNet-18 takes over seven minutes per round here), each with the
# attackers' settings and the attacks measured with them: on WRN-16-1 the default attackers (one local epoch) did
# not plant BadNets (ASR 0.014-0.049 in rounds 1-16, seed 0, against 0.97 on the small CNN), so BadNets is measured
# with attackers training 5 local epochs (`malicious-epochs`, DBA's setting) as well, to give MCL a backdoor to
# remove; the default attackers planted Blended (ASR 0.986 at round 2 and 0.94-0.96 in rounds 12-14, seed 0), so
# Blended needs no such row.
PAPER_MODELS: tuple[tuple[str, dict[str, Any], tuple[str, ...]], ...] = (
    ("wrn16-1", {}, ATTACKS), ("wrn16-1", {"malicious-epochs": 5}, ("badnets",)))
# The purifiers of the `models` part: MCL (its paper's model is WRN-16-1) and CNP, which on the small CNN's 48 BN
# neurons cannot rank them sharply (issue 19); WRN-16-1 has 464.
MODEL_PURIFIERS = ("mcl", "cnp")
# Bulyan tolerates f malicious of n only if n >= 4f + 3: with 20% malicious, 11 clients (f = 2) is the smallest
# federation it accepts, so its row is measured there (all 11 sampled each round).
RULE_SETTINGS: dict[str, dict[str, Any]] = {"bulyan": {"num-clients": 11, "clients-per-round": 11}}
# The rules measured over every seed beside FedAvg: the strongest competitor of the single-seed table (2026-11,
# commit 3df7004): Multi-Krum, the lowest ASR at no BA cost on both attacks (0.012 / 0.014, BA 0.910 / 0.912).
# The other rules get seed 0 only: all eleven over three seeds would take about four hours here.
SEEDED_RULES = ("multikrum",)


# Keys that only matter when a given method is selected: a cached run stays valid when they change
# while the method is not in use (e.g. a new ABL default does not invalidate a FedAvg run).
SCOPED: dict[str, tuple[str, str]] = {
    "abl-": ("client-defense", "abl"), "dbd-": ("client-defense", "dbd"), "cnp-": ("defense", "cnp"),
    "flame-": ("aggregation", "flame"), "foolsgold-": ("aggregation", "foolsgold"), "rlr-": ("aggregation", "rlr"),
    "normclip-": ("aggregation", "normclip"), "dp-": ("aggregation", "dp-clip"), "shadow-": ("defense", "shadow"),
    "dba-": ("attack", "dba"), "wanet-": ("attack", "wanet"), "sig-": ("attack", "sig"),
    "pgd-": ("attack-training", "pgd"), "cs-": ("attack-training", "constrain-and-scale"),
    "neurotoxin-": ("attack-training", "neurotoxin"), "continuous-": ("defense-schedule", "continuous"),
}


# Where a run is written and how fast it is evaluated, not what it computes.
NOT_RESULTS = ("out-dir", "eval-batch-size")
# The continuous defense's scan back-off, its watch, its re-test and its scan of the client most apart act only after
# a round every client took part in (server/wrappers/continuous.py): with clients sampled, a run is the same whatever
# they are.
BACK_OFF = ("continuous-scan-max-gap", "continuous-watch-z", "continuous-retest", "continuous-apart-z")


def _inverts_triggers(cfg: dict[str, Any]) -> bool:
    """Whether a run or purification of `cfg` finds triggers (a purifier that needs one), so the trigger sources' keys
    matter (a new default scan does not invalidate a run without a defense)."""
    return cfg["defense"] in PURIFIERS and build_purifier(cfg).trigger_source() is not None


@cache
def _trigger_keys() -> frozenset[str]:
    """The `inversion` key and every trigger source's options."""
    return frozenset(o.key for o in TRIGGER_SOURCES.all_options())


def _in_use(key: str, cfg: dict[str, Any]) -> bool:
    if key in _trigger_keys():
        return _inverts_triggers(cfg)
    if key in BACK_OFF:
        return cfg["defense-schedule"] == "continuous" and cfg["clients-per-round"] == cfg["num-clients"]
    for prefix, (selector, method) in SCOPED.items():
        if key.startswith(prefix):
            return cfg[selector] == method
    return key not in NOT_RESULTS


def same_config(saved: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """A cached result is valid if its config equals `cfg` on every key in use, keys newer than the record counting
    at the value the record's run ran at (their default, or their former one)."""
    return set(saved) <= set(cfg) and all(saved.get(k, FORMER_DEFAULTS.get(k, schema()[k].default)) == v
                                          for k, v in cfg.items() if _in_use(k, cfg))


def _suspected(result: dict[str, Any]) -> bool:
    """Whether a continuous run's scans flagged a label whose trigger moved part of the scanned cluster and nobody else
    in a round every client took part in: the only place `continuous-retest` acts."""
    everyone = result["config"]["num-clients"]
    return any(partly_singles_out(outlying, scan["cluster"])
               for r in result.get("rounds", []) if (scan := r.get("continuous", {}).get("scan"))
               and len(set(r["continuous"]["partitions"])) == everyone for outlying in scan["outliers"].values())


# Newer keys whose rule acts only where a run's record shows a condition: a record without the key, whose run met no
# such condition, counts at today's value (it would have run the same); others at the former value.
ACTS_ONLY_WHERE: dict[str, Callable[[dict[str, Any]], bool]] = {"continuous-retest": _suspected}


def cached(path: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    unchanged = {k: cfg[k] for k, acts in ACTS_ONLY_WHERE.items() if k in cfg and not acts(result)}
    return result if same_config({**unchanged, **result["config"]}, cfg) else None


def federated_run(out: Path, compute: bool, **overrides: Any) -> dict[str, Any] | None:
    """The run's results: cached, computed now (when `compute`), or None."""
    cfg = resolve({**overrides, "out-dir": str(out)})
    result = cached(out / "results.json", cfg)
    if result is not None and result["rounds"][-1]["round"] != cfg["rounds"]:
        result = None  # an interrupted run: results.json is rewritten every round
    if result is None and compute:
        result = run_experiment(cfg, out)
    return result


def purified(run_dir: Path, res: dict[str, Any], defense: str, compute: bool) -> dict[str, Any] | None:
    """A purifier's record on the final model of the run `res` kept in `run_dir`: cached, computed now (when
    `compute`), or None. Keys the run did not use (a scan's, in a run without a defense) take today's defaults."""
    out = run_dir / f"purify-{defense}"
    saved = {k: v for k, v in res["config"].items() if k != "out-dir" and _in_use(k, res["config"])}
    cfg = resolve({**saved, "defense": defense})
    record = cached(out / "purify.json", cfg)
    if record is None and compute:
        overrides = {k: v for k, v in cfg.items() if k != "out-dir" and res["config"].get(k) != v}
        record = purify(str(final_checkpoint(run_dir, saved)), overrides, out)
    return record


def final_checkpoint(run_dir: Path, settings: dict[str, Any]) -> Path:
    """The final checkpoint of the run of `settings` kept in `run_dir`, the run made again when git kept only its
    results.json."""
    checkpoint = run_dir / "checkpoints" / "final.pt"
    if not checkpoint.is_file():
        run_experiment(resolve({**settings, "out-dir": str(run_dir)}), run_dir)
    return checkpoint


def final(res: dict[str, Any]) -> tuple[float, float]:
    last = res["rounds"][-1]
    return last["ba"], last["asr"]


def run_seconds(res: dict[str, Any]) -> float:
    return sum(r.get("seconds", 0.0) + r.get("eval_seconds", 0.0) for r in res["rounds"])


def aggregation_seconds(runs: list[dict[str, Any]]) -> str:
    """Seconds the server spent in the aggregation rule itself, summed over each run (mean over the runs)."""
    totals = []
    for res in runs:
        times = [(row.get("aggregation") or {}).get("seconds") for row in res["rounds"] if row["round"] > 0]
        if not times or None in times:
            return "-"
        totals.append(sum(times))
    return mean_std(totals, 1)


def excluded_malicious(runs: list[dict[str, Any]]) -> str:
    """How often the aggregation rule left out the attackers' updates (over all runs), where the rule reports it."""
    kept = total = 0
    seen = False
    for row in (row for res in runs for row in res["rounds"]):
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


def finals(runs: list[dict[str, Any]]) -> str:
    """`BA | ASR | seeds` cells of a row over the finished runs of its seeds."""
    return (f"{mean_std([final(r)[0] for r in runs])} | {mean_std([final(r)[1] for r in runs])} | "
            f"{len(runs)}")


def finding(rec: dict[str, Any]) -> str:
    """What a purification's scan flagged and, for CNP, the share of BatchNorm neurons it pruned."""
    pruned = rec.get("cnp_pruned_share")
    return str(rec.get("flagged", "-")) + ("" if pruned is None else f", pruned {pruned:.0%}")


def model_cells(runs: list[dict[str, Any]], recs: list[dict[str, Any]]) -> str:
    """A `models` row's cells after the defense: BA and ASR before, ASR after, BA drop, seeds, run and purifier
    seconds, findings."""
    drops = [rec["ba_before"] - rec["ba_after"] for rec in recs]
    return (f"{mean_std([rec['ba_before'] for rec in recs])} | {mean_std([rec['asr_before'] for rec in recs])} | "
            f"{mean_std([rec['asr_after'] for rec in recs])} | {mean_std(drops)} | {len(recs)} | "
            f"{mean_std([run_seconds(r) for r in runs], 0)} | {mean_std([rec['seconds'] for rec in recs], 0)} | "
            f"{'; '.join(map(finding, recs))}")


def aggregation_row(attack: str, name: str, runs: list[dict[str, Any]]) -> str:
    if not runs:
        return f"| {attack} | {name} | not run | | | | | |"
    return (f"| {attack} | {name} | {finals(runs)} | {aggregation_seconds(runs)} | "
            f"{mean_std([run_seconds(r) for r in runs], 0)} | {excluded_malicious(runs)} |")


class Tables:
    """The parts' tables over the runs under `out`: a run of a part being computed is made when not cached; every
    run and purification rendered is kept in `used` (for the code versions) and some in `curves` (for the PNG)."""

    def __init__(self, out: Path, computed: set[str], attacks: set[str], overrides: dict[str, str],
                 seeds: int) -> None:
        self.out, self.computed, self.attacks, self.overrides, self.seeds = out, computed, attacks, overrides, seeds
        self.curves: dict[str, dict[str, Any]] = {}
        self.used: list[dict[str, Any]] = []

    def computing(self, part: str, attack: str) -> bool:
        return part in self.computed and attack in self.attacks

    def runs(self, name: str, n: int, compute: bool, **settings: Any) -> list[dict[str, Any]]:
        """The finished runs `<name>-s<seed>` of seeds 0..n-1 (computed now when `compute`)."""
        runs = [federated_run(self.out / f"{name}-s{seed}", compute, **self.overrides, **settings, seed=seed)
                for seed in range(n)]
        found = [r for r in runs if r is not None]
        self.used += found
        return found

    def purifications(self, name: str, runs: list[dict[str, Any]], defense: str,
                      compute: bool) -> list[dict[str, Any]]:
        """`defense` on the final model of each run `<name>-s<seed>` of `runs` that has (or, when `compute`, gets) a
        record; those records count as used."""
        recs = [rec for r in runs
                if (rec := purified(self.out / f"{name}-s{r['config']['seed']}", r, defense, compute)) is not None]
        self.used += recs
        return recs

    def defenses(self, base: dict[str, list[dict[str, Any]]]) -> list[str]:
        rows = []
        for attack, runs in base.items():
            if runs:
                self.curves[f"{attack}, FedAvg, no defense, seed 0"] = runs[0]
                rows += self.purifier_rows(attack, runs)
        return section("Server-side defenses (FedAvg, final global model; mean +/- std over the seeds column's runs)",
                       "| attack | defense | BA | ASR | seeds | seconds | flagged (per seed; CNP: BN neurons pruned) |",
                       rows, "defenses")

    def purifier_rows(self, attack: str, base: list[dict[str, Any]]) -> list[str]:
        """One attack's rows: no defense, then every purifier on each seed's final model."""
        rows = [f"| {attack} | none | {finals(base)} | - | - |"]
        for defense in DEFENSES:
            recs = self.purifications(attack, base, defense, self.computing("defenses", attack))
            if not recs:
                rows.append(f"| {attack} | {defense} | not run | | | | |")
                continue
            rows.append(f"| {attack} | {defense} | {mean_std([rec['ba_after'] for rec in recs])} | "
                        f"{mean_std([rec['asr_after'] for rec in recs])} | {len(recs)} | "
                        f"{mean_std([rec['seconds'] for rec in recs], 1)} | {'; '.join(map(finding, recs))} |")
        return rows

    def aggregation(self, base: dict[str, list[dict[str, Any]]]) -> list[str]:
        rows = []
        for attack, runs in base.items():
            rows.append(aggregation_row(attack, "fedavg", runs))
            for rule in AGGREGATIONS:
                setting = RULE_SETTINGS.get(rule, {})
                rule_runs = self.runs(f"{attack}-agg-{rule}", self.seeds if rule in SEEDED_RULES else 1,
                                      self.computing("aggregation", attack), attack=attack, aggregation=rule, **setting)
                name = rule + "".join(f", {k} {v}" for k, v in setting.items() if k == "num-clients")
                rows.append(aggregation_row(attack, name, rule_runs))
                if rule == "flame" and rule_runs:
                    self.curves[f"{attack}, FLAME, seed 0"] = rule_runs[0]
        return section("Aggregation rules (no server-side defense; FedAvg's runs are the `defenses` part's)",
                       "| attack | aggregation | BA | ASR | seeds | aggregation seconds | run seconds | attacker "
                       "updates excluded |", rows, "aggregation")

    def poisoned(self) -> list[str]:
        rows = []
        for attack in ATTACKS:
            for cd in CLIENT_DEFENSES:
                runs = self.runs(f"{attack}-poisoned-{cd}", self.seeds, self.computing("poisoned", attack),
                                 attack=attack, threat="poisoned-data", **{"client-defense": cd})
                rows.append(f"| {attack} | {cd} | {finals(runs)} | {mean_std([run_seconds(r) for r in runs], 0)} |"
                            if runs else f"| {attack} | {cd} | not run | | | |")
                if cd != "none" and runs:
                    self.curves[f"{attack}, poisoned data, {cd.upper()}, seed 0"] = runs[0]
        return section("Poisoned data, honest clients (`threat=poisoned-data`)",
                       "| attack | client-defense | BA | ASR | seeds | run seconds |", rows, "poisoned")

    def models(self) -> list[str]:
        """MCL and CNP at the end on the paper's model: the federated run, then each purifier on its final model,
        per seed."""
        rows = []
        for attack in ATTACKS:
            compute = self.computing("models", attack)
            for model, attackers, attacks in PAPER_MODELS:
                if attack not in attacks:
                    continue
                name = f"{attack}-{model}" + "".join(f"-{k}{v}" for k, v in attackers.items())
                label = model + "".join(f", {k} {v}" for k, v in attackers.items())
                runs = self.runs(name, self.seeds, compute, attack=attack, model=model, **attackers)
                for defense in MODEL_PURIFIERS:
                    recs = self.purifications(name, runs, defense, compute)
                    if not recs:
                        rows.append(f"| {attack} | {label} | {defense} | not run |" + " |" * 7)
                        continue
                    rows.append(f"| {attack} | {label} | {defense} | {model_cells(runs, recs)} |")
        title = "MCL and CNP at the end on the paper's model (FedAvg; mean +/- std over the seeds column's runs)"
        return section(title, "| attack | model | defense | BA before | ASR before | ASR after | BA drop | seeds | "
                       "run seconds | purifier seconds (scan included) | flagged (per seed; CNP: BN neurons pruned) |",
                       rows, "models")

    def centralised(self) -> list[str]:
        """The seed systems in the papers' setting: the client-side ones as runs, the server-side ones on the
        no-defense run's final model; BA drops paired by seed with the no-defense run."""
        settings = load_toml(CENTRALISED)
        rows = []
        for attack in ATTACKS:
            compute = self.computing("centralised", attack)
            runs = {cd: self.runs(f"central-{attack}-{cd}", CENTRAL_SEEDS.get(cd, self.seeds), compute,
                                  **{**settings, "attack": attack, "client-defense": cd}) for cd in CLIENT_DEFENSES}
            plain = {r["config"]["seed"]: final(r)[0] for r in runs["none"]}
            for cd in CLIENT_DEFENSES:
                drops = [plain[r["config"]["seed"]] - final(r)[0] for r in runs[cd] if r["config"]["seed"] in plain]
                rows.append(f"| {attack} | {cd} | client | {finals(runs[cd])} | {mean_std(drops)} | "
                            f"{mean_std([run_seconds(r) for r in runs[cd]], 0)} | - |" if runs[cd]
                            else f"| {attack} | {cd} | client | not run |" + " |" * 5)
            for defense in CENTRAL_PURIFIERS:
                recs = self.purifications(f"central-{attack}-none", runs["none"], defense, compute)
                rows.append(f"| {attack} | {defense} | server | {mean_std([rec['ba_after'] for rec in recs])} | "
                            f"{mean_std([rec['asr_after'] for rec in recs])} | {len(recs)} | "
                            f"{mean_std([rec['ba_before'] - rec['ba_after'] for rec in recs])} | "
                            f"{mean_std([rec['seconds'] for rec in recs], 0)} | {'; '.join(map(finding, recs))} |"
                            if recs else f"| {attack} | {defense} | server | not run |" + " |" * 5)
        return section("The papers' centralised setting (one honest client, 10% of its data poisoned; mean +/- std "
                       "over the seeds column's runs)", "| attack | system | runs on | BA | ASR | seeds | BA drop | "
                       "seconds (run, or purification with its scan) | flagged (per seed; CNP: BN neurons pruned) |",
                       rows, "centralised")

    def continuous(self) -> list[str]:
        every = self.runs("badnets-mcl-every5", 1, self.computing("continuous", "badnets"), attack="badnets",
                          defense="mcl", **{"defense-schedule": "every:5"})
        rows = [f"- round {r['round']}: flagged {r.get('flagged')}, trigger: "
                f"{r.get('trigger_source') or 'none, not purified'}, BA {r['ba_before']:.4f} -> "
                f"{r['ba_after']:.4f}, ASR {r['asr_before']:.4f} -> {r['asr_after']:.4f}"
                for run in every for r in run["defense"]]
        if every:
            self.curves["badnets, MCL every 5 rounds"] = every[0]
        return section("MCL every 5 rounds, BadNets attacking in every round (seed 0)",
                       "BA / ASR before -> after each purification:", rows, "continuous")


def build_tables(out: Path, rendered: list[str], computed: set[str], attacks: set[str], overrides: dict[str, str],
                 seeds: int) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Compute the runs of `computed` parts x `attacks` that are not cached; render each of the `rendered` parts that
    has a cached run, saying which code made its runs. Returns {part: its block} and the seed-0 curves."""
    t = Tables(out, computed, attacks, overrides, seeds)
    base: dict[str, list[dict[str, Any]]] = {}
    if {"defenses", "aggregation"} & set(rendered):
        base = {a: t.runs(a, seeds, t.computing("defenses", a), attack=a) for a in ATTACKS}
    render: dict[str, Callable[[], list[str]]] = {
        "defenses": lambda: t.defenses(base), "aggregation": lambda: t.aggregation(base), "poisoned": t.poisoned,
        "attacks": lambda: attack_tables(t.runs, "attacks" in computed, attacks, t.curves),
        "continuous": t.continuous, "models": t.models, "centralised": t.centralised}
    blocks = {}
    for part in rendered:
        t.used = [r for runs in base.values() for r in runs] if part in ("defenses", "aggregation") else []
        lines = render[part]()
        if any(line.startswith("No run of this part is cached") for line in lines):
            print("\n".join(lines))
            continue
        versions = sorted({rec.get("provenance", {}).get("code_version", "?") for rec in t.used})
        lines.append(f"Runs and purifications made at code version {', '.join(versions)} (their provenance); "
                     f"table written by {provenance()}")
        blocks[part] = "\n".join(lines)
    return blocks, t.curves


def section(title: str, header: str, rows: list[str], part: str) -> list[str]:
    """A part's table, or one line saying that none of its runs is cached (a row with a result is needed)."""
    if not any("not run" not in row for row in rows):
        return [f"### {title}", "", f"No run of this part is cached: `python -m benchmarks.defense_table --parts "
                f"{part}` computes it.", ""]
    rule = "|" + "---|" * header.count(" | ") + "---|" if header.startswith("|") else ""
    return [f"### {title}", "", header, *([rule] if rule else []), *rows, ""]


def variant_name(attack: str, training: str) -> str:
    return attack if training == "plain" else f"{attack}-{training}"


def piece_asr(res: dict[str, Any]) -> str:
    """The final round's ASR of each DBA piece alone, where the attack has pieces."""
    pieces = res["rounds"][-1].get("asr_pieces") or {}
    return ", ".join(f"{v:.2f}" for v in pieces.values()) or "-"


def attack_tables(seeded_runs: Callable[..., list[dict[str, Any]]], computing: bool, attacks: set[str],
                  curves: dict[str, dict[str, Any]]) -> list[str]:
    """The `attacks` part (seed 0): each attack without defense, and some with MCL every 5 rounds."""
    rows = []
    for attack, training in VARIANTS:
        runs = seeded_runs(variant_name(attack, training), 1, computing and attack in attacks,
                           attack=attack, **{"attack-training": training})
        if not runs:
            rows.append(f"| {attack} | {training} | not run | | | | |")
            continue
        ba, asr = final(runs[0])
        peak = max(row["asr"] for row in runs[0]["rounds"])
        rows.append(f"| {attack} | {training} | {ba:.4f} | {asr:.4f} | {peak:.4f} | {piece_asr(runs[0])} | "
                    f"{run_seconds(runs[0]):.0f} |")
    lines = section("Attacks without defense (FedAvg, seed 0)", "| attack | attack-training | BA | ASR | highest ASR "
                    "| ASR per DBA piece | run seconds |", rows, "attacks")
    rows = []
    for attack, training in MCL_EVERY:
        name = variant_name(attack, training)
        runs = seeded_runs(f"{name}-mcl-every5", 1, computing and attack in attacks,
                           attack=attack, defense="mcl", **{"attack-training": training, "defense-schedule": "every:5"})
        if not runs:
            rows.append(f"| {attack} | {training} | not run | | |")
            continue
        curves[f"{name}, MCL every 5 rounds"] = runs[0]
        after = ", ".join(f"{d['asr_before']:.2f} -> {d['asr_after']:.3f}" for d in runs[0]["defense"])
        ba, asr = final(runs[0])
        rows.append(f"| {attack} | {training} | {after} | {ba:.4f} | {asr:.4f} |")
    return lines + section("Attacks with MCL every 5 rounds (rounds 5, 10, 15, 20; seed 0)", "| attack | "
                           "attack-training | ASR before -> after each purification | final BA | final ASR |", rows,
                           "attacks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "runs" / "defense-table"),
                        help="where the federated runs are kept")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds of the `defenses`, `poisoned` and `models` parts and of FedAvg and Multi-Krum in "
                             "`aggregation`")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to compute if not cached and render: {', '.join(PARTS)}")
    parser.add_argument("--attacks", default=",".join(sorted(set(ATTACKS) | {a for a, _ in VARIANTS})),
                        help="comma-separated attacks to compute runs for")
    parser.add_argument("--set", action="append", default=[], help="config overrides for every run (key=value)")
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the cached runs")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    attacks = {a.strip() for a in args.attacks.split(",") if a.strip()}
    known = set(ATTACKS) | {a for a, _ in VARIANTS}
    if attacks - known:
        parser.error(f"unknown attacks {sorted(attacks - known)}; allowed: {', '.join(sorted(known))}")
    overrides = dict(item.split("=", 1) for item in args.set)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    computed = set() if args.report_only else set(parts)
    blocks, curves = build_tables(Path(args.out), parts, computed, attacks, overrides, args.seeds)
    if not blocks:
        print(f"no finished run of {', '.join(parts)} under {args.out}: nothing to report, the blocks are left as "
              f"they are")
        sys.exit(NOTHING_CACHED)
    for part, text in blocks.items():
        print(text)
        write_block(BLOCKS[part], text)
    if set(blocks) == set(PARTS):
        plot(curves, HERE / "defense_rounds.png")
    else:
        print("defense_rounds.png left as it is: it shows every part's seed-0 curves, so it is redrawn when all "
              "parts are rendered")


if __name__ == "__main__":
    main()
