"""Memory and time against the number of clients: 10, 100, 1000 clients with 10 sampled per round.

Each setting is one fl-defense run on Flower + Ray (`--rounds` rounds, the default attack). A sampler
thread adds up the resident memory of this process and every process below it (Ray's GCS, raylet and
client actors) every 0.2 s, from /proc; the peak is reported with the mean seconds per round (rounds
after the first, which carries the actors' warm-up). Data partitions are indices into one shared array,
so only the sampled clients' work should grow with the round, not with the federation.

Every setting gives each client as many images as the largest federation's clients have (`train-fraction`
scaled with the number of clients), so each round trains 10 clients on the same amount of data and
evaluates on the same test set: what changes is only the size of the federation. `--full-data` splits
the whole training set instead (then more clients means smaller shards and shorter rounds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Emit, main_writing_block
from fl_defense.config import resolve
from fl_defense.simulations.runner import run_experiment

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants."""
    tree, total, stack = _children(), 0, [root]
    while stack:
        pid = stack.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
        stack.extend(tree.get(pid, []))
    return total


class PeakMemory:
    """Samples `tree_rss` of this process in a thread while in the `with` block."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    overrides = dict(item.split("=", 1) for item in args.set)
    sizes = [int(c) for c in args.clients.split(",")]
    rows = []
    for n in sizes:
        share = {} if args.full_data else {"train-fraction": n / max(sizes)}
        cfg = resolve({**overrides, **share, "num-clients": n, "clients-per-round": 10, "rounds": args.rounds,
                       "device": "cpu"})
        with tempfile.TemporaryDirectory() as tmp, PeakMemory() as mem:
            t0 = time.perf_counter()
            results = run_experiment({**cfg, "out-dir": tmp}, Path(tmp))
            wall = time.perf_counter() - t0
        later = [r for r in results["rounds"] if r["round"] > 1]
        per_round = sum(r["seconds"] + r["eval_seconds"] for r in later) / max(len(later), 1)
        rows.append((n, mem.peak / 2**20, per_round, wall))
        emit(f"{n} clients: peak memory {mem.peak / 2**20:.0f} MiB, {per_round:.2f} s/round, wall {wall:.0f} s")
    emit(f"data: {'the whole training set split' if args.full_data else 'the same shard size per client in every setting'}")
    emit("| clients | peak memory (MiB) | seconds per round | wall seconds |")
    emit("|---|---|---|---|")
    for n, mib, sec, wall in rows:
        emit(f"| {n} | {mib:.0f} | {sec:.2f} | {wall:.0f} |")
    base = rows[0]
    emit(f"ratios at {rows[-1][0]} vs {base[0]} clients: memory {rows[-1][1] / base[1]:.2f}x, "
          f"seconds per round {rows[-1][2] / base[2]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full-data", action="store_true", help="split the whole training set in every setting")
    parser.add_argument("--set", action="append", default=[], help="config overrides (key=value)")
    main_writing_block("SCALE", parser, measure, fence=True)


if __name__ == "__main__":
    main()
