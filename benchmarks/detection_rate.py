"""How often the NC scan flags the true target (backdoored models) and flags nothing (clean models).

Models are trained centrally on real Fashion-MNIST (BadNets and Blended at several seeds and targets,
and clean ones); each is scanned with the default fast budget, and the anomaly statistic (raw or
log mask norms) and threshold are evaluated on the same norms. Prints one row per setting.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchmarks.common import central_model
from fl_defense.config import resolve
from fl_defense.defense import inversion_images, nc_settings
from fl_defense.inversion import anomaly_indices, scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="config overrides for the scan (key=value)")
    parser.add_argument("--json", help="write the raw norms here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = dict(item.split("=", 1) for item in args.set)
    rows = []
    for seed in range(args.seeds):
        target = [0, 3, 7, 5, 9][seed % 5]
        for attack in ("badnets", "blended", "none"):
            s = central_model(attack, seed, target)
            cfg = resolve({**overrides, "seed": seed})
            g = torch.Generator().manual_seed(seed)
            res = scan(s.model, inversion_images(s.clean, cfg, g), 10, mode=cfg["inversion-mode"],
                       settings=nc_settings(cfg), threshold=cfg["nc-threshold"], log_norms=False,
                       generator=g, device=torch.device("cpu"))
            norms = np.array(res.norms)
            row = {"attack": attack, "seed": seed, "target": target if attack != "none" else None,
                   "norms": [round(float(v), 2) for v in norms], "seconds": round(res.seconds, 1),
                   "raw": [round(float(v), 2) for v in anomaly_indices(norms)],
                   "log": [round(float(v), 2) for v in anomaly_indices(norms, log=True)]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh)
    for stat in ("raw", "log"):
        for thr in (1.5, 2.0, 2.5, 3.0, 3.5, 4.0):
            hit = fp = nb = nc = 0
            for r in rows:
                idx = np.array(r[stat])
                flagged = [int(t) for t in np.argsort(-idx) if idx[t] > thr]
                if r["target"] is None:
                    nc += 1
                    fp += bool(flagged)
                else:
                    nb += 1
                    hit += flagged[:1] == [r["target"]]
            print(f"{stat:>4} threshold {thr:.1f}: target flagged first {hit}/{nb}, clean models flagged {fp}/{nc}")


if __name__ == "__main__":
    main()
