"""How pure ABL's isolation and STRIP's test were in finished `client-defense=abl` runs under `threat=poisoned-data`.

ABL's clients cannot know which of their samples were poisoned; the simulation can. For each client this reads what
ABL isolated and what STRIP then flagged among all its samples for unlearning (kept in the client's memory under the
run's client-state folder) and, for a victim (a malicious-fraction client whose shard a third party poisoned),
replays the seeded poisoning of its shard to count how many of them were poisoned. A clean client should flag none.
The client-state folders are not in git, so it reads runs made on this machine:

    python -m benchmarks.abl_isolation benchmarks/runs/defense-table/badnets-poisoned-abl-s*
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import RecordDict

from clients.behaviour import poisoned_shard
from clients.client_app import MEMORY_KEY, load_memory, memory_folder
from fl_defense.attacks.malicious import malicious_clients
from fl_defense.client_defenses.abl import ISOLATED, SUSPECTS


@dataclass(frozen=True)
class Client:
    """One client's isolated and flagged samples, and how many of each were poisoned, of `poisoned` (all 0 for a
    clean client)."""

    pid: int
    victim: bool
    isolated: int
    isolated_poisoned: int
    flagged: int
    flagged_poisoned: int
    poisoned: int


def purity(run: Path) -> list[Client]:
    """Every client of the run in `run` that reached ABL's isolation, in partition order."""
    cfg = json.loads((run / "results.json").read_text())["config"]
    here = {**cfg, "out-dir": str(run), "client-checkpoints": True}  # the folder may have moved since the run
    victims = malicious_clients(cfg["num-clients"], cfg["malicious-fraction"], cfg["seed"])
    rows = []
    for pid in range(cfg["num-clients"]):
        memory = load_memory(RecordDict(), MEMORY_KEY, memory_folder(here, pid), cfg["rounds"] + 1)
        if ISOLATED not in memory or SUSPECTS not in memory:
            if pid in victims:
                raise ValueError(f"{run}: no isolated or flagged samples in victim {pid}'s client memory (was the "
                                 "run made here, with abl?)")
            continue
        poisoned = poisoned_shard(cfg, pid).poisoned if pid in victims else torch.empty(0, dtype=torch.long)
        isolated, flagged = memory[ISOLATED], memory[SUSPECTS]
        rows.append(Client(pid, pid in victims, len(isolated), int(torch.isin(isolated, poisoned).sum()),
                           len(flagged), int(torch.isin(flagged, poisoned).sum()), len(poisoned)))
    return rows


def describe(row: Client) -> str:
    if row.victim:
        return (f"victim {row.pid} isolated {row.isolated_poisoned}/{row.isolated} poisoned, flagged "
                f"{row.flagged_poisoned}/{row.flagged} (of its {row.poisoned} poisoned)")
    return f"clean {row.pid} flagged {row.flagged} of {row.isolated}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of client-defense=abl, threat=poisoned-data")
    for run in parser.parse_args().runs:
        try:
            rows = purity(run)
        except (OSError, ValueError) as err:
            print(f"abl_isolation: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"{run.name}: " + "; ".join(describe(row) for row in rows))


if __name__ == "__main__":
    main()
