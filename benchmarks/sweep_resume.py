"""A real sweep, killed part-way and resumed: `fl-defense sweep` on a grid (default: the example grid,
2 attacks x 3 defenses x 2 seeds, 5 rounds on a fifth of the training data), through Flower + Ray.

The sweep runs as a subprocess in its own process group. Once `--kill-after` runs have finished, the
whole group (the sweep, Ray and its actors) is SIGKILLed in the middle of the next run, once that run
has written its first resume checkpoint, as a crash would. The same command is then started again.
The script checks, from the files and the sweep's log, that every run finished before the kill was
reused (its results.json untouched), that the killed run went on from its checkpoint and that every
other run was made, and prints the sweep's mean/std table. The last line is the verdict.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Emit, main_writing_block

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).with_name("fl-defense")


def finished_runs(out: Path) -> dict[str, float]:
    """Run folders that hold a complete run, with their results.json's modification time."""
    runs = (p.parent.parent for p in out.glob("*/checkpoints/final.pt"))
    return {run.name: (run / "results.json").stat().st_mtime_ns for run in runs if (run / "results.json").is_file()}


def mid_run(out: Path) -> list[tuple[str, int]]:
    """Unfinished runs that have a resume checkpoint, with the round it holds."""
    from fl_defense.server import checkpoint

    return [(path.parent.parent.name, int(checkpoint.load(path.parent.parent)["round"]))
            for path in out.glob(f"*/checkpoints/{checkpoint.NAME}") if not path.with_name("final.pt").exists()]


def sweep(grid: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([str(CLI), "sweep", "--grid", str(grid), "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    t0 = time.perf_counter()
    proc = sweep(Path(args.grid), out)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.rstrip().endswith(": running") and len(finished_runs(out)) >= args.kill_after:
            while not mid_run(out):  # kill once the next run has completed a round or more
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    first_seconds = time.perf_counter() - t0
    before = finished_runs(out)
    emit(f"first sweep: {len(before)} runs finished, then SIGKILLed in the next after its round "
          f"{mid_run(out)[0][1]} ({first_seconds:.0f} s)")

    t1 = time.perf_counter()
    again = sweep(Path(args.grid), out)
    text, _ = again.communicate()
    resumed_seconds = time.perf_counter() - t1
    if again.returncode != 0:
        sys.exit(f"the resumed sweep failed (exit {again.returncode}):\n{text}")
    after = finished_runs(out)
    total = int(re.search(r"^\[sweep \d+/(\d+)\]", text, re.M).group(1))
    reused = [name for name, mtime in before.items() if after.get(name) == mtime]
    emit(f"resumed sweep: {len(after)} of {total} runs finished ({resumed_seconds:.0f} s); "
          f"{text.count('finished before')} reported as finished before")
    emit((out / "summary.md").read_text())
    resumed = re.findall(r"resuming after round (\d+)", text)
    ok = (len(reused) == len(before) and len(after) == total and text.count("finished before") == len(before)
          and len(resumed) == 1)
    emit(f"resume {'OK' if ok else 'FAILED'}: {len(reused)} of {len(before)} finished runs reused untouched, "
          f"the killed run went on after its round {', '.join(resumed) or '(none)'}, "
          f"{total - len(before) - len(resumed)} more run, {len(after)} of {total} complete")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=str(ROOT / "simulations" / "configs" / "sweep-example.toml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "runs" / "sweep-resume"))
    parser.add_argument("--kill-after", type=int, default=4, help="finished runs before the kill")
    main_writing_block("SWEEP-RESUME", parser, measure, fence=True)


if __name__ == "__main__":
    main()
