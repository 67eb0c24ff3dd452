"""Every CUDA path in one short script, for the day a GPU is lent (`python -m benchmarks.gpu_check`, under 4 minutes
on one GPU), and its CPU dry run (`--dry-run`, tiny sizes, what CI runs: tests/test_gpu_check.py).

1. A Flower + Ray run whose clients hold a quarter of the GPU each (`num-gpus` 0.25, four per GPU), with `amp`.
2. The server's evaluation (BA and ASR on the 10,000 test images), on the device against the CPU.
3. The NC scan on the device in the loop and batched modes (and the loop on the CPU, for the CPU/GPU ratio; in the
   dry run the device is the CPU, so that is the loop itself).
4. The default defense (the nc+warp+blend inversion, then MCL) on the device, on a model trained centrally with
   BadNets.

It prints one line per step with its wall time, then the ratios loop/batched and CPU/GPU; `--json FILE` also
writes them. On a GPU its figures go into benchmarks/README.md (GPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import central_model, provenance
from fl_defense.config import resolve
from fl_defense.defense import Defender
from fl_defense.inversion.nc import NeuralCleanseScan
from fl_defense.metrics import Evaluator
from fl_defense.simulations.runner import run_experiment

FULL = {"rounds": 3, "train-fraction": 0.25, "n-train": 20000, "epochs": 2, "defense": {}}
DRY = {"rounds": 1, "train-fraction": 0.02, "n-train": 2000, "epochs": 1,
       "defense": {"nc-images": 100, "nc-epochs": 1, "nc-reference-epochs": 1, "warp-epochs": 1, "mcl-epochs": 1}}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def federated(device: str, sizes: dict[str, Any], gpus: float, folder: Path) -> dict[str, Any]:
    cfg = resolve({"num-clients": 4, "clients-per-round": 4, "rounds": sizes["rounds"], "device": device,
                   "train-fraction": sizes["train-fraction"], "num-gpus": gpus, "amp": True,
                   "malicious-fraction": 0.25, "client-checkpoints": False, "out-dir": str(folder)})
    results, seconds = timed(lambda: run_experiment(cfg, folder))
    last = results["rounds"][-1]
    return {"seconds": seconds, "ba": last["ba"], "asr": last["asr"], "num_gpus": gpus}


def scan_seconds(setting: Any, cfg: dict[str, Any], device: torch.device, mode: str) -> tuple[list[int], float]:
    source = NeuralCleanseScan({**cfg, "inversion-mode": mode})
    model = setting.model.to(device)
    found, seconds = timed(lambda: source.find(model, setting.clean, 10, device, torch.Generator().manual_seed(0)))
    return found.flagged, seconds


def check(device: torch.device, sizes: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The four steps, each timed; what they measured."""
    out: dict[str, Any] = {"device": str(device)}
    out["federated"] = federated(str(device), sizes, 0.25 if device.type == "cuda" else 0.0, folder / "run")
    print(f"1. Flower + Ray, 4 clients at num-gpus {out['federated']['num_gpus']}, amp: "
          f"{out['federated']['seconds']:.1f} s, BA {out['federated']['ba']:.4f} ASR {out['federated']['asr']:.4f}",
          flush=True)
    setting = central_model("badnets", 0, 0, n_train=sizes["n-train"], epochs=sizes["epochs"])
    cfg = resolve({**sizes["defense"], "defense": "mcl", "device": str(device), "eval-batch-size": 2000})
    cpu = Evaluator(cfg, setting.data, torch.device("cpu"))
    here = Evaluator(cfg, setting.data, device)
    (_, cpu_eval), (_, dev_eval) = timed(lambda: cpu(setting.model.cpu())), timed(lambda: here(setting.model.to(device)))
    out["evaluation"] = {"cpu_seconds": cpu_eval, "device_seconds": dev_eval}
    print(f"2. evaluation: CPU {cpu_eval:.2f} s, {device} {dev_eval:.2f} s", flush=True)
    scans = {mode: scan_seconds(setting, cfg, device, mode) for mode in ("loop", "batched")}
    scans["cpu loop"] = scans["loop"] if device.type == "cpu" else scan_seconds(setting, cfg, torch.device("cpu"), "loop")
    out["scan"] = {mode: {"flagged": f, "seconds": s} for mode, (f, s) in scans.items()}
    for mode, (flagged, seconds) in scans.items():
        print(f"3. NC scan, {mode}: {seconds:.1f} s, flagged {flagged}", flush=True)
    defender = Defender(cfg, setting.clean, 10, device, here)
    outcome, seconds = timed(lambda: defender(setting.model.to(device), torch.Generator().manual_seed(0)))
    r = outcome.record
    out["defense"] = {k: r[k] for k in ("flagged", "ba_before", "ba_after", "asr_before", "asr_after")} | \
        {"seconds": seconds}
    print(f"4. nc+warp+blend + MCL: {seconds:.1f} s, flagged {r['flagged']}, "
          f"BA {r['ba_before']:.4f} -> {r['ba_after']:.4f}, ASR {r['asr_before']:.4f} -> {r['asr_after']:.4f}",
          flush=True)
    out["ratios"] = {"scan loop/batched": scans["loop"][1] / scans["batched"][1],
                     "scan CPU/device": scans["cpu loop"][1] / scans["loop"][1],
                     "evaluation CPU/device": cpu_eval / dev_eval}
    print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in out["ratios"].items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes (no GPU needed)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    with tempfile.TemporaryDirectory(prefix="fl-defense-gpu-check-") as tmp:
        figures = check(device, DRY if args.dry_run else FULL, Path(tmp))
    figures["provenance"] = provenance()
    print(figures["provenance"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
