"""Choose MCL's cross-entropy weight: BA/ASR of MCL at several `mcl-ce-weight` on the same checkpoints.

Uses the final global models of `benchmarks/defense_table.py`'s seed-0 federated runs (BadNets and Blended,
default setting); a run whose checkpoint is not there (git keeps only its results.json) is made again. Weight 0
is the reference MCL (contrastive loss only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import Emit, main_writing_block
from benchmarks.defense_table import final_checkpoint
from fl_defense.simulations.purify import purify

HERE = Path(__file__).resolve().parent


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    emit("| attack | mcl-ce-weight | BA before | BA after | ASR before | ASR after | seconds |")
    emit("|---|---|---|---|---|---|---|")
    for attack in ("badnets", "blended"):
        checkpoint = final_checkpoint(Path(args.runs) / f"{attack}-s0", {"attack": attack, "seed": 0})
        for w in args.weights.split(","):
            rec = purify(str(checkpoint), {"defense": "mcl", "mcl-ce-weight": w}, None)
            emit(f"| {attack} | {w} | {rec['ba_before']:.4f} | {rec['ba_after']:.4f} | {rec['asr_before']:.4f} | "
                  f"{rec['asr_after']:.4f} | {rec['seconds']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default=str(HERE / "runs" / "defense-table"))
    parser.add_argument("--weights", default="0,0.25,0.5,1,2")
    main_writing_block("MCL-CE-WEIGHT", parser, measure, fence=False)


if __name__ == "__main__":
    main()
