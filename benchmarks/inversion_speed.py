"""Default all-label NC scan vs the classic per-label Neural Cleanse at its reference budget.

Both run on the same backdoored model (real Fashion-MNIST, BadNets) and the same clean set; the
reference is BackdoorBench's budget (80 passes per label over the whole clean set, NC's early stop),
the default is this project's fast scan. The batched mode (all labels in one pass) is timed on the
default budget too: it pays on GPUs, not on a 2-core CPU. Also scans a clean model with the default.
The last line is the speed ratio reference / default.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import central_model
from fl_defense.config import resolve
from fl_defense.defense import inversion_images, nc_settings
from fl_defense.inversion import ScanResult, scan


def run(setting_model: torch.nn.Module, images: torch.Tensor, cfg: dict, seed: int) -> ScanResult:
    g = torch.Generator().manual_seed(seed)
    return scan(setting_model, inversion_images_for(images, cfg, g), 10, mode=cfg["inversion-mode"],
                settings=nc_settings(cfg), threshold=cfg["nc-threshold"], log_norms=cfg["nc-statistic"] == "log",
                generator=g, device=torch.device("cpu"))


def inversion_images_for(images: torch.Tensor, cfg: dict, g: torch.Generator) -> torch.Tensor:
    from fl_defense.purification import CleanSet

    return inversion_images(CleanSet(images, torch.zeros(len(images), dtype=torch.long)), cfg, g)


def describe(name: str, res: ScanResult, target: int | None) -> str:
    norms = ", ".join(f"{v:.1f}" for v in res.norms)
    verdict = "" if target is None else f" (true target {target}: {'found' if res.flagged[:1] == [target] else 'MISSED'})"
    return f"{name:<26} {res.seconds:8.1f} s  flagged {res.flagged}{verdict}  norms [{norms}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    bd = central_model("badnets", args.seed, args.target)
    clean = central_model("none", args.seed, args.target)
    default = resolve({"seed": args.seed})
    reference = resolve({"seed": args.seed, "nc-budget": "reference"})
    batched = resolve({"seed": args.seed, "inversion-mode": "batched"})

    fast = run(bd.model, bd.clean.x, default, args.seed)
    print(describe("default (fast, loop)", fast, args.target), flush=True)
    fast_clean = run(clean.model, clean.clean.x, default, args.seed)
    print(describe("default on a clean model", fast_clean, None), flush=True)
    bat = run(bd.model, bd.clean.x, batched, args.seed)
    print(describe("fast, batched", bat, args.target), flush=True)
    ref = run(bd.model, bd.clean.x, reference, args.seed)
    print(describe("reference (80 epochs, loop)", ref, args.target), flush=True)
    print(f"batched / loop speed on this machine: {fast.seconds / bat.seconds:.2f}x")
    same = fast.flagged[:1] == ref.flagged[:1]
    print(f"same label flagged: {same}; clean model flagged nothing: {not fast_clean.flagged}")
    print(f"speed ratio reference / default: {ref.seconds / fast.seconds:.1f}x")


if __name__ == "__main__":
    main()
