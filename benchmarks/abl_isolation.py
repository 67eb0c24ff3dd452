"""How pure ABL's isolation was in finished `client-defense=abl` runs under `threat=poisoned-data`.

ABL's clients cannot know which of their samples were poisoned; the simulation can. For each victim (a
malicious-fraction client whose shard a third party poisoned) this replays the seeded poisoning of its shard and
counts how many of the samples ABL isolated (kept in the client's memory under the run's client-state folder)
were poisoned ones. The client-state folders are not in git, so it reads runs made on this machine:

    python -m benchmarks.abl_isolation benchmarks/runs/defense-table/badnets-poisoned-abl-s*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from flwr.app import RecordDict

from clients.behaviour import poisoned_shard
from clients.client_app import MEMORY_KEY, load_memory, memory_folder
from fl_defense.attacks.malicious import malicious_clients
from fl_defense.client_defenses.abl import ISOLATED


def purity(run: Path) -> list[tuple[int, int, int]]:
    """(victim, isolated samples that were poisoned, isolated samples) for each victim of the run in `run`."""
    cfg = json.loads((run / "results.json").read_text())["config"]
    here = {**cfg, "out-dir": str(run), "client-checkpoints": True}  # the folder may have moved since the run
    rows = []
    for pid in sorted(malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])):
        memory = load_memory(RecordDict(), MEMORY_KEY, memory_folder(here, pid), cfg["rounds"] + 1)
        if ISOLATED not in memory:
            raise ValueError(f"{run}: no isolated samples in victim {pid}'s client memory (was the run made here, "
                             "with abl?)")
        isolated = memory[ISOLATED]
        hit = int(torch.isin(isolated, poisoned_shard(cfg, pid).poisoned).sum())
        rows.append((pid, hit, len(isolated)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of client-defense=abl, threat=poisoned-data")
    for run in parser.parse_args().runs:
        try:
            rows = purity(run)
        except (OSError, ValueError) as err:
            print(f"abl_isolation: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"{run.name}: " + "; ".join(f"victim {pid} {hit}/{n} poisoned" for pid, hit, n in rows))


if __name__ == "__main__":
    main()
