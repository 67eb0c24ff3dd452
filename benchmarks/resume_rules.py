"""Every registered aggregation rule survives SIGKILL + `--resume` with the uninterrupted run's numbers.

For each rule of the registry (and dp-clip's adaptive and fixed modes), a short real run through Flower and Ray
(4 clients on 5% of Fashion-MNIST, 1 malicious, 4 rounds; Bulyan 7 clients, which its n >= 4f + 3 needs) is
made twice: straight, and as a `fl-defense run` process SIGKILLed (its whole process group) once its round-2
checkpoint is written, then `fl-defense run --resume`. The table says, per rule, whether every round's BA/ASR
and the rule's own per-round report are identical. The test suite checks the same for every rule on fake
replies (tests/test_aggregation.py); this is the end-to-end version, too slow for CI at 13 runs x 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import kill_after_round, provenance, write_block
from fl_defense.config import resolve
from fl_defense.registry import AGGREGATION_RULES
from fl_defense.simulations.cli import main as cli
from fl_defense.simulations.runner import run_experiment

BASE = {"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05, "rounds": 4, "malicious-fraction": 0.25,
        "device": "cpu", "client-checkpoints": False}
EXTRA = {"bulyan": {"num-clients": 7, "clients-per-round": 7, "malicious-fraction": 0.15},
         "dp-clip (fixed)": {"clip-norm": 2.0}}


def variants() -> dict[str, dict[str, Any]]:
    names = [n for n in AGGREGATION_RULES.entries]
    out = {n if n != "dp-clip" else "dp-clip (adaptive)": {"aggregation": n} for n in names}
    out["dp-clip (fixed)"] = {"aggregation": "dp-clip"}
    return {name: {**BASE, **settings, **EXTRA.get(name, EXTRA.get(settings["aggregation"], {}))}
            for name, settings in sorted(out.items())}


def compare(settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    straight = run_experiment(resolve({**settings, "out-dir": str(folder / "a")}), folder / "a")
    killed_after = kill_after_round(settings, folder / "b", 2)
    code = cli(["run", "--resume", str(folder / "b")]) if 0 < killed_after < settings["rounds"] else None
    resumed = json.loads((folder / "b" / "results.json").read_text())

    def rows(results: dict[str, Any]) -> list[Any]:
        return [(r["round"], r["ba"], r["asr"], {k: v for k, v in r.get("aggregation", {}).items() if k != "seconds"})
                for r in results["rounds"]]

    return {"killed_after": killed_after, "resume_exit": code, "same": rows(resumed) == rows(straight),
            "final": (straight["rounds"][-1]["ba"], straight["rounds"][-1]["asr"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="rule names (default: every registered rule)")
    parser.add_argument("--dry", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = ["| rule | killed after round | resumed | every round identical | final BA / ASR |", "|---|---|---|---|---|"]
    for name, settings in variants().items():
        if args.only and name.split(" ")[0] not in args.only:
            continue
        folder = Path(tempfile.mkdtemp(prefix="fl-defense-resume-"))
        try:
            r = compare(settings, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        lines.append(f"| {name} | {r['killed_after']} | {'exit ' + str(r['resume_exit'])} | "
                     f"{'yes' if r['same'] else 'NO'} | {r['final'][0]:.4f} / {r['final'][1]:.4f} |")
        print(lines[-1], flush=True)
    if not args.dry and not args.only:
        write_block("RESUME-RULES", "\n".join(lines) + "\n\n" + provenance())


if __name__ == "__main__":
    main()
