"""How often the NC scan flags the true target (backdoored models) and nothing (clean models).

Models are trained centrally on real Fashion-MNIST: BadNets and Blended at several seeds and
targets, and clean ones. Each is scanned once with the configured budget; the detection rules
(raw or log norms, MAD threshold, with or without the clean-reference transfer check) are then
evaluated on the same norms and transfer rates. Prints one JSON row per model, then the rates.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchmarks.common import central_model
from fl_defense.config import resolve
from fl_defense.inversion import DetectionRule, anomaly_indices
from fl_defense.inversion.nc import NeuralCleanseScan

TARGETS = (0, 3, 7, 5, 9, 1)


def rates(rows: list[dict], rule: DetectionRule, attack: str | None = None) -> tuple[int, int, int, int]:
    """(true target flagged first, backdoored models, clean models with a flag, clean models)."""
    hit = nb = fp = nc = 0
    for r in rows:
        if attack and r["attack"] not in (attack, "none"):
            continue
        idx = anomaly_indices(np.array(r["norms"]), log=rule.log_norms)
        transfer = np.array(r["transfer"]) if rule.transfer_max < 1 else None
        flagged = rule.flag(idx, transfer)
        if r["target"] is None:
            nc, fp = nc + 1, fp + bool(flagged)
        else:
            nb, hit = nb + 1, hit + (flagged[:1] == [r["target"]])
    return hit, nb, fp, nc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="config overrides for the scan (key=value)")
    parser.add_argument("--json", help="read rows from this file if it exists, else write them there")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = dict(item.split("=", 1) for item in args.set)
    rows = []
    for seed in range(args.seeds):
        target = TARGETS[seed % len(TARGETS)]
        for attack in ("badnets", "blended", "none"):
            s = central_model(attack, seed, target)
            cfg = resolve({**overrides, "seed": seed, "nc-transfer-max": 1.0})
            found = NeuralCleanseScan(cfg).find(s.model, s.clean, 10, torch.device("cpu"),
                                                torch.Generator().manual_seed(seed)).record
            row = {"attack": attack, "seed": seed, "target": None if attack == "none" else target,
                   "norms": [round(float(v), 2) for v in found["mask_l1"]], "transfer": found["transfer"],
                   "seconds": round(found["inversion_seconds"], 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh)
    print("| statistic | MAD threshold | transfer check | BadNets target found | Blended target found | clean models flagged |")
    print("|---|---|---|---|---|---|")
    for log in (False, True):
        for thr in (1.5, 2.0, 2.5, 3.0):
            for tmax in (1.0, 0.3, 0.2, 0.1):
                rule = DetectionRule(thr, log, tmax)
                b, nb, fp, nc = rates(rows, rule, "badnets")
                bl, nbl, _, _ = rates(rows, rule, "blended")
                check = "off" if tmax >= 1 else f"<= {tmax}"
                print(f"| {'log' if log else 'raw'} | {thr} | {check} | {b}/{nb} | {bl}/{nbl} | {fp}/{nc} |")


if __name__ == "__main__":
    main()
