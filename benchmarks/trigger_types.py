"""MCL at the end of training with the default trigger inversion, on every trigger type the project plants.

For each of BadNets, Blended, DBA, WaNet and SIG: the default federated run (10 clients, 2 malicious, 20 rounds,
FedAvg; `--seeds` seeds), then `fl-defense purify --defense mcl` on its final global model with the default
inversion (`nc+warp+blend`), as the server would at `defense-schedule=end`. The table gives the label flagged first
(and whether it is the target), ASR and BA before and after, and the scan's seconds. Runs and purifications are
kept under benchmarks/runs/trigger-types/ and reused while their config is unchanged (the defense table's cache,
whose records git keeps), so a rerun, in this session or a later one, only does what is missing; the block names
the code versions that made them. Writes the TRIGGER-TYPES block.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, NOTHING_CACHED, provenance, write_block
from benchmarks.defense_table import federated_run, purified

ATTACKS = ("badnets", "blended", "dba", "wanet", "sig")


def record(attack: str, seed: int, root: Path, compute: bool) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The default federated run of `attack` at `seed` and MCL's purification of its final model: cached, made now
    (when `compute`), or None."""
    run_dir = root / f"{attack}-s{seed}"
    res = federated_run(run_dir, compute, attack=attack, seed=seed)
    rec = None if res is None else purified(run_dir, res, "mcl", compute)
    return None if res is None or rec is None else (res, rec)


def row(attack: str, records: list[dict[str, Any]]) -> str:
    def pm(key: str) -> str:
        values = [r[key] for r in records]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

    found = sum(bool(r.get("true_target_found")) for r in records)
    drop = [r["ba_before"] - r["ba_after"] for r in records]
    flagged = ", ".join(str(r.get("flagged")) for r in records)
    return (f"| {attack} | {found}/{len(records)} ({flagged}) | {pm('asr_before')} | {pm('asr_after')} | "
            f"{pm('ba_before')} | {statistics.fmean(drop):.4f} | "
            f"{statistics.fmean(r['inversion_seconds'] for r in records):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--dry", action="store_true", help="print only; leave benchmarks/README.md alone")
    parser.add_argument("--report-only", action="store_true", help="compute nothing; report the cached runs")
    args = parser.parse_args()
    root = HERE / "runs" / "trigger-types"
    used: list[dict[str, Any]] = []
    lines = ["| attack | true target flagged first (flagged) | ASR before | ASR after | BA before | BA drop | "
             "scan seconds |", "|---|---|---|---|---|---|---|"]
    attacks = args.attacks.split(",")
    found: dict[str, list[dict[str, Any]]] = {attack: [] for attack in attacks}
    for seed in range(args.seeds):  # seed by seed: a run cut short still leaves every attack's earlier seeds
        for attack in attacks:
            if pair := record(attack, seed, root, not args.report_only):
                found[attack].append(pair[1])
                used += pair
    for attack, records in found.items():
        if records:
            lines.append(row(attack, records))
    if not used:
        print(f"no finished run under {root}: nothing to report, the block is left as it is")
        sys.exit(NOTHING_CACHED)
    versions = sorted({doc.get("provenance", {}).get("code_version", "?") for doc in used})
    text = "\n".join(lines) + (f"\n\nUp to {args.seeds} seed(s) each (the second cell's count); mean "
                               f"± std over seeds. Runs and purifications made at code version {', '.join(versions)}; "
                               f"table written by {provenance()}")
    if not args.dry:
        write_block("TRIGGER-TYPES", text)
    print(text)


if __name__ == "__main__":
    main()
