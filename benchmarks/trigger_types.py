"""MCL at the end of training with the default trigger inversion, on every trigger type the project plants.

For each of BadNets, Blended, DBA, WaNet and SIG: the default federated run (10 clients, 2 malicious, 20 rounds,
FedAvg; `--seeds` seeds), then `fl-defense purify --defense mcl` on its final global model with the default
inversion (`nc+warp`), as the server would at `defense-schedule=end`. The table gives the label flagged first
(and whether it is the target), ASR and BA before and after, and the scan's seconds. Runs are kept under
benchmarks/runs/<code version>/ and reused, so a rerun only does what is missing. Writes the TRIGGER-TYPES block.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, code_version, provenance, write_block
from fl_defense.config import resolve
from fl_defense.simulations.purify import purify
from fl_defense.simulations.runner import run_experiment

ATTACKS = ("badnets", "blended", "dba", "wanet", "sig")


def federated(attack: str, seed: int, root: Path) -> Path:
    """The final checkpoint of the default run for `attack` and `seed`, run now if it is not there yet."""
    out = root / f"{attack}-s{seed}"
    final = out / "checkpoints" / "final.pt"
    if not final.is_file():
        run_experiment(resolve({"attack": attack, "seed": seed, "out-dir": str(out)}), out)
    return final


def purified(attack: str, seed: int, root: Path) -> dict[str, Any]:
    out = root / f"{attack}-s{seed}" / "mcl"
    if (out / "purify.json").is_file():
        return dict(json.loads((out / "purify.json").read_text()))
    return purify(str(federated(attack, seed, root)), {"defense": "mcl"}, out)


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
    args = parser.parse_args()
    root = HERE / "runs" / code_version() / "trigger-types"
    lines = ["| attack | true target flagged first (flagged) | ASR before | ASR after | BA before | BA drop | "
             "scan seconds |", "|---|---|---|---|---|---|---|"]
    for attack in args.attacks.split(","):
        records = [purified(attack, seed, root) for seed in range(args.seeds)]
        lines.append(row(attack, records))
        print(lines[-1], flush=True)
    text = "\n".join(lines) + f"\n\n{args.seeds} seed(s) each; mean ± std over seeds. " + provenance()
    if not args.dry:
        write_block("TRIGGER-TYPES", text)
    print(text)


if __name__ == "__main__":
    main()
