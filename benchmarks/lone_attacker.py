"""A lone attacker under the continuous defense, without and with the scan of the most apart client.

Four probes of the default setting (10 clients, all taking part, 20 rounds) with 1 client attacking in rounds 11-20
(BadNets target 0 seed 0, BadNets target 3 seed 1, Blended target 7 seed 2, BadNets target 0 seed 0 under
Dirichlet(0.5) label skew), each run with today's defaults and with `continuous-apart-z=8`; and two runs with no
attacker (Dirichlet(0.5) for 20 rounds, IID for 40) that say what the scan of the most apart client does where
there is nothing to find. The watch (`continuous-watch-z`) sees colluding attackers, not one alone, and in a minority
cluster of three to five clients a lone attacker's backdoor is diluted. Writes the LONE_ATTACKER block of
benchmarks/README.md. Runs are kept under benchmarks/runs (records in git), so a fresh clone re-renders and a missing
run is made (7-9 minutes each here).

    python -m benchmarks.lone_attacker [--report-only]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import NOTHING_CACHED, provenance, write_block
from benchmarks.defense_table import federated_run

RUNS = Path(__file__).resolve().parent / "runs"
APART = {"continuous-apart-z": 8.0}
LONE = {"malicious-fraction": 0.1, "attack-schedule": "window:11-20", "defense": "mcl",
        "defense-schedule": "continuous"}
CLEAN = {"malicious-fraction": 0.0, "defense": "mcl", "defense-schedule": "continuous"}
# (what, settings, run folder with today's defaults, run folder with APART)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("BadNets, target 0, seed 0", LONE, "probes/lone-attacker-retest-s0", "probes/lone-apart8-s0"),
    ("BadNets, target 3, seed 1", {**LONE, "target-label": 3, "seed": 1}, "probes/lone-attacker-retest-target3-s1",
     "probes/lone-apart8-target3-s1"),
    ("Blended, target 7, seed 2", {**LONE, "attack": "blended", "target-label": 7, "seed": 2},
     "probes/lone-attacker-retest-blended-target7-s2", "probes/lone-apart8-blended-target7-s2"),
    ("BadNets, target 0, seed 0, Dirichlet(0.5)", {**LONE, "partition": "dirichlet"},
     "probes/lone-attacker-retest-dirichlet-s0", "probes/lone-apart8-dirichlet-s0"),
    ("no attacker, Dirichlet(0.5), seed 0", {**CLEAN, "partition": "dirichlet"}, "probes/dirichlet-no-attack-retest-s0",
     "probes/dirichlet-no-attack-apart8-s0"),
    ("no attacker, IID, seed 0, 40 rounds", {**CLEAN, "rounds": 40}, "continuous/always/continuous-MCL-no-attack-s0",
     "probes/no-attack-apart8-s0"),
]
HEADER = ("| run | `continuous-apart-z` | labels made known (round, by) | scans (rounds; * the most apart client) | "
          "the attacker's apart z, rounds 11-14 | largest apart z of the rounds nobody attacked | "
          "highest ASR from round 11 | ASR at the last round | final BA | left out: attacker rounds / benign "
          "client-rounds |\n|---|---|---|---|---|---|---|---|---|---|")


def made_known(res: dict[str, Any]) -> str:
    """Each label made known, with its round and what made it (the scan of a cluster, of the most apart client, or
    the re-test of a suspect)."""
    found = []
    for r in res["rounds"]:
        c = r.get("continuous", {})
        for label in c.get("retest", {}).get("new", []):
            found.append(f"{label} ({r['round']}, re-test)")
        scan = c.get("scan", {})
        for label in scan.get("new", []):
            found.append(f"{label} ({r['round']}, {scan.get('scanned', 'cluster')} scan)")
    return ", ".join(found) or "none"


def scans(res: dict[str, Any]) -> str:
    return ", ".join(f"{r['round']}{'*' if c['scan'].get('scanned') == 'most apart client' else ''}"
                     for r in res["rounds"] if "scan" in (c := r.get("continuous", {}))) or "none"


def apart(res: dict[str, Any], rounds: Callable[[dict[str, Any]], bool]) -> list[tuple[float, bool]]:
    """Per round that `rounds` takes, with a watch record holding it: the most apart client's z, and whether it
    attacked."""
    return [(w["apart"]["z"], w["apart"]["client"] in r.get("attackers", []))
            for r in res["rounds"] if rounds(r) and "apart" in (w := r.get("continuous", {}).get("watch", {}))]


def row(what: str, res: dict[str, Any]) -> str:
    rounds = res["rounds"]
    attacked = [r for r in rounds if r.get("attackers")]
    attacker_z = ", ".join(f"{z:.1f}" + ("" if mine else " (another client)")
                           for z, mine in apart(res, lambda r: 11 <= r["round"] <= 14))
    quiet = [z for z, _ in apart(res, lambda r: not r.get("attackers"))]
    left = [set(r.get("continuous", {}).get("excluded", [])) for r in rounds]
    caught = sum(bool(set(r["attackers"]) & out) for r, out in zip(rounds, left, strict=True) if r.get("attackers"))
    benign = sum(len(out - set(r.get("attackers", []))) for r, out in zip(rounds, left, strict=True))
    late = [r["asr"] for r in rounds if r["round"] >= 11]
    return (f"| {what} | {res['config'].get('continuous-apart-z', 0.0):g} | {made_known(res)} | {scans(res)} | "
            f"{(attacker_z or 'not recorded') if attacked else '-'} | {max(quiet) if quiet else 'not recorded'} | "
            f"{max(late):.3f} | {rounds[-1]['asr']:.3f} | {rounds[-1]['ba']:.4f} | "
            f"{f'{caught}/{len(attacked)}' if attacked else '-'} / {benign} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the kept runs")
    args = parser.parse_args()
    rows, used = [], []
    for what, settings, plain, with_apart in CASES:
        for folder, extra in ((plain, {}), (with_apart, APART)):
            res = federated_run(RUNS / folder, not args.report_only, **settings, **extra)
            if res is not None:
                rows.append(row(what, res))
                used.append(res)
    if not rows:
        print("no kept run: nothing to report, the block is left as it is")
        sys.exit(NOTHING_CACHED)
    versions = sorted({r.get("provenance", {}).get("code_version", "?") for r in used})
    text = "\n".join([HEADER, *rows, "", f"Runs made at code version {', '.join(versions)} (each results.json's "
                      f"provenance); table written by {provenance()}"])
    print(text)
    write_block("LONE_ATTACKER", text)


if __name__ == "__main__":
    main()
