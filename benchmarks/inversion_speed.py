"""Default all-label NC scan vs the classic per-label Neural Cleanse at its reference budget.

Both run on the same backdoored model (real Fashion-MNIST, BadNets) and the same clean set; the
reference is BackdoorBench's budget (80 passes per label over the whole clean set, NC's early stop),
the default is this project's fast scan. The batched mode (all labels in one pass) is timed on the
default budget too, and so is the Ray mode (the labels as jobs on a pool of Ray actors, one per core
here), once with a cold pool (the actors start) and once warm, as in a run's later defense calls; Ray
itself is started before the clock. Both pay on GPUs, not on a 2-core CPU. Also scans a clean model
with the default.
The clean-set reference models (transfer check) are trained once and shared, as in a federated run;
the timings are of the inversion itself. The last line is the speed ratio reference / default.
"""

from __future__ import annotations

import argparse
import os

import ray
import torch

from benchmarks.common import Emit, Setting, central_model, main_writing_block
from fl_defense.config import resolve
from fl_defense.inversion import Finding
from fl_defense.inversion.nc import NeuralCleanseScan
from fl_defense.inversion.reference import CleanReference


def run(setting: Setting, cfg: dict, reference: CleanReference | None) -> Finding:
    """One scan as the defense runs it (the run's reference models passed in, already trained, so only inversion is
    timed)."""
    source = NeuralCleanseScan(cfg)
    if reference is not None:
        source.reference = reference
    return source.find(setting.model, setting.clean, 10, torch.device("cpu"), torch.Generator().manual_seed(cfg["seed"]))


def seconds(res: Finding) -> float:
    return float(res.record["inversion_seconds"])


def describe(name: str, res: Finding, target: int | None) -> str:
    norms = ", ".join(f"{v:.1f}" for v in res.record["mask_l1"])
    verdict = "" if target is None else f" (true target {target}: {'found' if res.flagged[:1] == [target] else 'MISSED'})"
    return f"{name:<26} {seconds(res):8.1f} s  flagged {res.flagged}{verdict}  norms [{norms}]"


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    torch.set_num_threads(2)
    bd = central_model("badnets", args.seed, args.target)
    clean = central_model("none", args.seed, args.target)
    default = resolve({"seed": args.seed})
    reference_cfg = resolve({"seed": args.seed, "nc-budget": "reference", "nc-statistic": "raw",
                             "nc-threshold": 2.0, "nc-reference-epochs": 0})  # classic NC: MAD > 2 on raw norms
    batched = resolve({"seed": args.seed, "inversion-mode": "batched"})
    on_ray = resolve({"seed": args.seed, "inversion-mode": "ray"})

    g = torch.Generator().manual_seed(args.seed)
    reference = CleanReference(default["nc-reference-epochs"], default["nc-references"])
    reference.get(bd.model, bd.clean.x, bd.clean.y, g, torch.device("cpu"))
    fast_clean = run(clean, default, reference)  # first: it also warms up torch's kernels and threads
    emit(describe("default on a clean model", fast_clean, None))
    fast = run(bd, default, reference)
    emit(describe("default (fast, loop)", fast, args.target))
    bat = run(bd, batched, reference)
    emit(describe("fast, batched", bat, args.target))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        cold = run(bd, on_ray, reference)
        emit(describe("fast, Ray pool (cold)", cold, args.target))
        warm = run(bd, on_ray, reference)
        emit(describe("fast, Ray pool (warm)", warm, args.target))
    finally:
        ray.shutdown()
    emit(f"batched / loop speed on this machine: {seconds(fast) / seconds(bat):.2f}x")
    emit(f"Ray pool / batched time: cold {seconds(cold) / seconds(bat):.2f}x, warm {seconds(warm) / seconds(bat):.2f}x")
    if args.no_reference:
        return
    ref = run(bd, reference_cfg, None)
    emit(describe("reference (80 epochs, loop)", ref, args.target))
    same = fast.flagged[:1] == ref.flagged[:1]
    emit(f"same label flagged: {same}; clean model flagged nothing: {not fast_clean.flagged}")
    emit(f"speed ratio reference / default: {seconds(ref) / seconds(fast):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference budget (about 4 minutes here): time the default's modes only")
    main_writing_block("INVERSION-SPEED", parser, measure, fence=True)


if __name__ == "__main__":
    main()
