"""How often each trigger source flags the true target first (backdoored models) and flags nothing (clean ones).

Models are trained centrally on real Fashion-MNIST (20,000 images, 2 epochs, 10% of each batch poisoned; SIG
stamps 10% of the target-class images, as a clean-label attack does): BadNets, Blended, DBA, WaNet and SIG,
each at `--seeds` seeds with two target labels per seed, and clean models at the same seeds. Every source
(`--sources`) scans every model once with its defaults, on the server's 3,000 held-out clean images. Rows are
cached per model and source under benchmarks/.cache (keyed on the code version), so a rerun only scans what
changed. The `nc`, `warp` and `blend` rows are the three parts of the default `nc+warp+blend` scan (its record
keeps what each part flagged and its seconds): each part is that scan itself, the three sharing the reference
models, which saves the benchmark two thirds of its time. Writes the DETECTION block of benchmarks/README.md;
`--dry` only prints.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from benchmarks.common import CACHE, central_model, code_version, provenance, write_block
from fl_defense.config import resolve
from fl_defense.registry import TRIGGER_SOURCES

ATTACKS = ("badnets", "blended", "dba", "wanet", "sig")
TARGETS = (0, 3, 7, 5, 9, 1)


def models(seeds: int) -> list[tuple[str, int, int | None]]:
    """(attack, seed, target) of every model: two targets per seed for each attack, one clean model per seed."""
    out: list[tuple[str, int, int | None]] = []
    for seed in range(seeds):
        for attack in ATTACKS:
            out += [(attack, seed, TARGETS[(2 * seed + i) % len(TARGETS)]) for i in range(2)]
        out.append(("none", seed, None))
    return out


DEFAULT = "nc+warp+blend"
PARTS = {"nc": DEFAULT, "warp": DEFAULT, "blend": DEFAULT}  # a source whose row is a part of another source's scan


def part(name: str, whole: dict[str, Any]) -> dict[str, Any]:
    """The row of the part `name` of a combined scan's row."""
    mine = whole["record"]["parts"][name]
    return {**whole, "source": name, "flagged": mine["flagged"], "seconds": round(mine["inversion_seconds"], 1)}


def scan(source: str, attack: str, seed: int, target: int | None) -> dict[str, Any]:
    """One model scanned by one source, cached on disk."""
    if source in PARTS:
        return part(source, scan(PARTS[source], attack, seed, target))
    path = CACHE / f"detect-{code_version()}-{source}-{attack}-s{seed}-t{target}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    s = central_model(attack, seed, 0 if target is None else target)
    cfg = resolve({"seed": seed, "inversion": source})
    t0 = time.perf_counter()
    found = TRIGGER_SOURCES[source](cfg).find(s.model, s.clean, 10, torch.device("cpu"),
                                              torch.Generator().manual_seed(seed))
    row = {"source": source, "attack": attack, "seed": seed, "target": target, "flagged": found.flagged,
           "seconds": round(time.perf_counter() - t0, 1),
           "record": {k: v for k, v in found.record.items() if isinstance(v, list | dict)}}
    CACHE.mkdir(exist_ok=True)
    path.write_text(json.dumps(row))
    return row


def table(rows: list[dict[str, Any]], sources: list[str], seeds: int) -> str:
    lines = ["| source | " + " | ".join(f"{a} target first" for a in ATTACKS) + " | all backdoored | clean models "
             "flagged | seconds per scan |", "|---|" + "---|" * (len(ATTACKS) + 3)]
    for source in sources:
        mine = [r for r in rows if r["source"] == source]
        cells = []
        hits = total = 0
        for attack in ATTACKS:
            group = [r for r in mine if r["attack"] == attack]
            found = sum(r["flagged"][:1] == [r["target"]] for r in group)
            hits, total = hits + found, total + len(group)
            cells.append(f"{found}/{len(group)}")
        clean = [r for r in mine if r["target"] is None]
        seconds = sum(r["seconds"] for r in mine) / max(len(mine), 1)
        lines.append(f"| `{source}` | " + " | ".join(cells) + f" | {hits}/{total} ({hits / max(total, 1):.0%}) | "
                     f"{sum(bool(r['flagged']) for r in clean)}/{len(clean)} | {seconds:.1f} |")
    return "\n".join(lines) + f"\n\n{len(models(seeds))} models ({seeds} seeds). " + provenance()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sources", default="nc,warp,blend,nc+warp+blend")
    parser.add_argument("--dry", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sources = args.sources.split(",")
    rows = []
    for attack, seed, target in models(args.seeds):
        for source in sources:
            rows.append(scan(source, attack, seed, target))
            r = rows[-1]
            print(json.dumps({k: r[k] for k in ("source", "attack", "seed", "target", "flagged", "seconds")}), flush=True)
    text = table(rows, sources, args.seeds)
    print(text)
    if not args.dry:
        write_block("DETECTION", text)


if __name__ == "__main__":
    main()
