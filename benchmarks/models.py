"""Seconds per federated round of each model (`model=`): the small CNN, WRN-16-1 and ResNet-18 on Fashion-MNIST.

The default setting (10 clients, all sampled, 2 malicious BadNets, one local epoch) through Flower + Ray, on a
`--train-fraction` share of the training set (the full set would take ResNet-18 about a quarter of an hour per
round here), for `--rounds` rounds. Per model: parameters, seconds per round after the first (client training,
messages and aggregation; the first round also starts the actors) and the server's evaluation seconds per
round (10,000 test images and 9,000 triggered ones, at the full test set whatever the training share), the
final BA and ASR, and each one's ratio to the small CNN measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Emit, main_writing_block
from fl_defense.config import resolve
from fl_defense.data import dataset_spec
from fl_defense.models import build_model
from fl_defense.simulations.runner import run_experiment

MODELS = ("cnn", "wrn16-1", "resnet18")


def timed(name: str, rounds: int, share: float) -> dict[str, Any]:
    """One run of `name`: its results.json as a dict."""
    cfg = resolve({"model": name, "rounds": rounds, "train-fraction": share, "device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        return run_experiment({**cfg, "out-dir": tmp}, Path(tmp))


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    spec = dataset_spec("fashion-mnist")
    rows = {}
    for name in MODELS:
        results = timed(name, args.rounds, args.train_fraction)
        later = [r for r in results["rounds"] if r["round"] > 1]
        rows[name] = (sum(p.numel() for p in build_model(name, spec).parameters()),
                      statistics.fmean(r["seconds"] for r in later), statistics.fmean(r["eval_seconds"] for r in later),
                      results["rounds"][-1])
    base = rows["cnn"]
    emit(f"{args.rounds} rounds on {args.train_fraction:.0%} of the training set "
         f"({round(args.train_fraction * 0.95 * 60000 / 10)} images per client); the other settings the default.")
    emit("")
    emit("| model | parameters | seconds per round (training) | x CNN | evaluation seconds per round | x CNN | "
         "final BA | final ASR |")
    emit("|---|---|---|---|---|---|---|---|")
    for name, (params, train, evaluation, last) in rows.items():
        emit(f"| `{name}` | {params:,} | {train:.2f} | {train / base[1]:.1f} | {evaluation:.2f} | "
             f"{evaluation / base[2]:.1f} | {last['ba']:.4f} | {last['asr']:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-fraction", type=float, default=0.05)
    main_writing_block("MODELS", parser, measure, fence=False)


if __name__ == "__main__":
    main()
