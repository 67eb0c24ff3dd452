"""Where `make run`'s time goes: the README's first experiment, timed from the command line, split by phase.

Runs `fl-defense run` with `make run`'s settings (the default config, `defense=mcl`,
`defense-schedule=continuous`) as a child process, as a user's shell would, and splits its wall time with
the run's own results.json:

- start and stop: the command's wall time minus its rounds (Python and library imports, Ray's start, the
  clients' data loading in the query round, Ray's shut-down, the plot);
- client training: each round's `seconds` minus the server's defense in it (the clients' local epochs on the
  Ray actors, the messages and the aggregation);
- evaluation: BA and ASR of the deployed model, every round (round 0 included);
- the defense: the trigger scan(s), the purification(s), and the rest (screening every client, the
  aggregate check), from the defense records.

Beside it, in the same run, the layout ratio behind the run's speed: one small-CNN SGD step (batch 32) and
one evaluation batch (1,000 images) with the weights stored NCHW and channels-last (what `build_model` gives),
at the run's thread counts (1 per client actor, the server's for evaluation). `--attack-only` also times the
same run without the defense. Writes the RUN-TIME block of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from benchmarks.common import Emit, main_writing_block, start_run
from fl_defense.data import dataset_spec
from fl_defense.registry import MODELS

MAKE_RUN = {"defense": "mcl", "defense-schedule": "continuous"}
BAR_SECONDS = 240.0


def timed_run(settings: dict[str, str], out: Path) -> tuple[float, dict[str, Any]]:
    """Wall seconds of `fl-defense run --set ...` (every other key at its default, as in default.toml) and its
    results.json."""
    start = time.perf_counter()
    proc = start_run(settings, out)
    if proc.wait() != 0:
        sys.exit(f"fl-defense run {settings} failed (exit {proc.returncode})")
    return time.perf_counter() - start, json.loads((out / "results.json").read_text())


def phases(wall: float, results: dict[str, Any]) -> dict[str, float]:
    """The run's wall seconds by phase (they add up to `wall`)."""
    rounds = [r for r in results["rounds"] if r["round"] > 0]
    evaluation = sum(r.get("eval_seconds", 0.0) for r in results["rounds"])
    defense = sum(r.get("continuous", {}).get("defense_seconds", 0.0) for r in rounds)
    scans = sum(d.get("inversion_seconds", 0.0) for d in results["defense"] if "scanned" in d or "flagged" in d)
    purifications = sum(d.get("purify_seconds", 0.0) for d in results["defense"])
    training = sum(r["seconds"] for r in rounds) - defense
    return {"start and stop": wall - training - defense - evaluation, "client training": training,
            "evaluation": evaluation, "defense: scans": scans, "defense: purifications": purifications,
            "defense: screening and checks": defense - scans - purifications}


def layout_ratios(server_threads: int) -> tuple[float, float]:
    """Speed of channels-last over NCHW weights: (SGD step at 1 thread, evaluation batch at `server_threads`)."""
    spec = dataset_spec("fashion-mnist")
    seconds: dict[tuple[str, bool], float] = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = MODELS["cnn"].for_dataset(spec)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        torch.set_num_threads(1)
        seconds["step", channels_last] = _sgd_seconds(model)
        torch.set_num_threads(server_threads)
        seconds["eval", channels_last] = _eval_seconds(model)
    torch.set_num_threads(server_threads)
    return (seconds["step", False] / seconds["step", True], seconds["eval", False] / seconds["eval", True])


def _sgd_seconds(model: torch.nn.Module, steps: int = 300) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    start = 0.0
    for i in range(steps + 20):
        if i == 20:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


@torch.inference_mode()
def _eval_seconds(model: torch.nn.Module, batches: int = 20) -> float:
    model.eval()
    x = torch.rand(1000, 1, 28, 28)
    model(x)
    start = time.perf_counter()
    for _ in range(batches):
        model(x)
    return time.perf_counter() - start


def report(runs: dict[str, tuple[float, dict[str, Any]]], ratios: tuple[float, float]) -> str:
    wall, results = runs["make run"]
    split = phases(wall, results)
    last = results["rounds"][-1]
    flagged = sorted({label for d in results["defense"] for label in d.get("confirmed", d.get("flagged", []))})
    lines = ["| phase | seconds | share |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.1f} | {sec / wall:.0%} |" for name, sec in split.items()]
    lines += [f"| **total (command line)** | **{wall:.1f}** | |", ""]
    verdict = "met" if wall < BAR_SECONDS else "missed"
    lines.append(f"`make run`'s experiment: {wall:.1f} s from the command line ({verdict}: the bar is "
                 f"{BAR_SECONDS:.0f} s); final BA {last['ba']:.4f}, ASR {last['asr']:.4f}; flagged {flagged}.")
    if "attack only" in runs:
        a_wall, a_results = runs["attack only"]
        a_last = a_results["rounds"][-1]
        lines.append(f"The attack without the defense (`defense=none`): {a_wall:.1f} s, final BA "
                     f"{a_last['ba']:.4f}, ASR {a_last['asr']:.4f}; `make run` / attack only: {wall / a_wall:.2f}x.")
    lines.append(f"Channels-last over NCHW weights, same process: {ratios[0]:.2f}x per SGD step (1 thread, "
                 f"batch 32), {ratios[1]:.2f}x per evaluation batch ({torch.get_num_threads()} threads, 1,000 images).")
    return "\n".join(lines)


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    runs: dict[str, tuple[float, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["make run"] = timed_run(MAKE_RUN, Path(tmp) / "make-run")
        if args.attack_only:
            runs["attack only"] = timed_run({}, Path(tmp) / "attack-only")
    emit(report(runs, layout_ratios(torch.get_num_threads())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attack-only", action="store_true", help="also time the run without the defense")
    main_writing_block("RUN-TIME", parser, measure, fence=False)


if __name__ == "__main__":
    main()
