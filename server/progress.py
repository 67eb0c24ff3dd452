"""What a run prints while it runs: a progress bar on a terminal, a line per round and per defense call, the table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fl_defense.server.reporting import format_table, nothing_aggregated
from tqdm import tqdm


class Progress:
    """The console side of a run (results.json and TensorBoard are `RunReport`'s)."""

    def __init__(self, rounds: int, done: int) -> None:
        self.rounds = rounds
        self.bar = tqdm(total=rounds, initial=done, desc="rounds", unit="round", file=sys.stderr, leave=False,
                        disable=not sys.stderr.isatty())

    def round(self, row: dict[str, Any]) -> None:
        loss = "-" if row.get("train_loss") is None else f"{row['train_loss']:.4f}"
        extra = ""
        if "asr_pieces" in row:
            extra += "  pieces " + " ".join(f"{v:.2f}" for v in row["asr_pieces"].values())
        if "shadow" in row:
            extra += (f"  backbone BA {row['backbone_ba']:.4f} ASR {row['backbone_asr']:.4f}  "
                      f"shadow {row['shadow']['state']}")
        self.bar.update(1)
        self.bar.set_postfix(BA=f"{row['ba']:.4f}", ASR=f"{row['asr']:.4f}")
        tqdm.write(f"[round {row['round']}/{self.rounds}] BA {row['ba']:.4f}  ASR {row['asr']:.4f}  loss {loss}  "
                   f"attackers {len(row.get('attackers', []))}  {row.get('seconds', 0.0):.1f} s{extra}")
        sys.stdout.flush()

    @staticmethod
    def defense(record: dict[str, Any]) -> None:
        if "retested" in record:  # the continuous defense's re-test of a scan's suspects
            retested = {k: v["outliers"] for k, v in record["retested"].items() if k != "new"}
            print(f"[defense {record['defense']} @ round {record['round']}] re-tested the last scan's suspects: "
                  f"outliers {retested}: made known {record['retested']['new'] or 'none'}", flush=True)
            return
        if "ba_before" not in record:  # a scan that purified nothing (the continuous defense's)
            print(f"[defense {record['defense']} @ round {record['round']}] scanned the {record.get('scanned', '')} "
                  f"model: flagged {record.get('flagged', '-')}  outliers of their triggers "
                  f"{record.get('outliers', {})} in the cluster {record.get('cluster', [])}: target "
                  f"{record.get('confirmed') or 'not yet'}  {record.get('inversion_seconds', 0.0):.1f} s",
                  flush=True)
            return
        print(f"[defense {record['defense']} @ round {record['round']}] flagged {record.get('flagged', '-')}  "
              f"BA {record['ba_before']:.4f} -> {record['ba_after']:.4f}  "
              f"ASR {record['asr_before']:.4f} -> {record['asr_after']:.4f}", flush=True)

    @staticmethod
    def plot(results: dict[str, Any], out_dir: Path) -> str:
        """plot.png of the run (`fl_defense.plotting`); where matplotlib is missing, a note instead."""
        from fl_defense.plotting import plot_run

        try:
            return str(plot_run(results, out_dir / "plot.png"))
        except ImportError:
            return "skipped (matplotlib is not installed)"

    def finish(self, results: dict[str, Any], out_dir: Path) -> None:
        self.bar.close()
        print(format_table(results), flush=True)
        print(f"results: {out_dir / 'results.json'}   plot: {self.plot(results, out_dir)}   "
              f"tensorboard --logdir {out_dir / 'tensorboard'}", flush=True)
        if nothing_aggregated(results):
            print("fl-defense: warning: every round was skipped (fewer valid replies than min-replies; see "
                  "'rejected' in results.json): the model was never aggregated", file=sys.stderr, flush=True)
