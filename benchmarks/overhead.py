"""Framework overhead: the same experiment as a plain in-process PyTorch FedAvg loop and through fl-defense on
Flower + Ray, in one run.

Same model, data, clients, local steps and seed (`--clients` clients, all sampled, `--rounds` rounds, the
default attack): (a) is the lower bound, written here without Flower or Ray: for each round it calls the
very client code (`clients.behaviour.local_update`) for every client in turn, averages with FedAvg and
evaluates BA/ASR as the server does; (b) is `fl-defense`'s simulation. It prints the wall time of each,
Ray's start-up (the part of (b) before round 1 and after the last round) separately, and the ratio of
(b) without start-up to (a) as its last line. Both compute the same model, so their final BA/ASR are
printed too as a check.

(a) runs the clients one after another with torch using every core; (b) runs one client per core
(`num-cpus` 1), each with one torch thread, as Ray's actors do.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from benchmarks.common import Emit, main_writing_block
from fl_defense.aggregation import average_states
from fl_defense.attacks import evaluation_attack
from fl_defense.clients.behaviour import local_update
from fl_defense.config import resolve
from fl_defense.data import cached_dataset
from fl_defense.metrics import ba_asr
from fl_defense.models import build_model
from fl_defense.simulations.runner import run_experiment


def in_process(cfg: dict[str, Any]) -> tuple[float, list[tuple[float, float]]]:
    """The plain loop: seconds and per-round (BA, ASR)."""
    t0 = time.perf_counter()
    data = cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], data.spec)
    attack = evaluation_attack(cfg, data.spec.shape, data.spec.num_classes)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    curve = []
    memories: dict[int, dict[str, torch.Tensor]] = {}
    for server_round in range(1, cfg["rounds"] + 1):
        results = [local_update(cfg, pid, server_round, state, memories.setdefault(pid, {}))
                   for pid in range(cfg["num-clients"])]
        state = average_states([r.state for r in results], [r.num_examples for r in results])
        model.load_state_dict(state)
        curve.append(ba_asr(model, data.test_x, data.test_y, attack, cfg["eval-batch-size"], torch.device("cpu")))
    return time.perf_counter() - t0, curve


def measure(args: argparse.Namespace, emit: Emit) -> None:
    """The benchmark itself; what it `emit`s is its README block."""
    overrides = dict(item.split("=", 1) for item in args.set)
    cfg = resolve({**overrides, "num-clients": args.clients, "clients-per-round": args.clients, "rounds": args.rounds,
                   "device": "cpu"})
    cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])  # loading the data is not overhead

    threads = torch.get_num_threads()
    a_seconds, a_curve = in_process(cfg)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        results = run_experiment({**cfg, "out-dir": tmp}, Path(tmp))
        b_seconds = time.perf_counter() - t0
    rounds = [r for r in results["rounds"] if r["round"] > 0]
    b_rounds = sum(r["seconds"] + r["eval_seconds"] for r in rounds)
    startup = b_seconds - b_rounds
    last = results["rounds"][-1]
    emit(f"setting: {args.clients} clients, all sampled, {args.rounds} rounds, {cfg['attack']} (the default otherwise)")
    emit(f"(a) in-process PyTorch loop: {a_seconds:.1f} s ({a_seconds / args.rounds:.2f} s/round); "
          f"final BA {a_curve[-1][0]:.4f} ASR {a_curve[-1][1]:.4f}")
    emit(f"(b) fl-defense on Flower + Ray: {b_seconds:.1f} s, of which Ray start-up and shut-down {startup:.1f} s and "
          f"rounds {b_rounds:.1f} s ({b_rounds / args.rounds:.2f} s/round); final BA {last['ba']:.4f} ASR {last['asr']:.4f}")
    emit(f"overhead ratio (b without start-up) / (a): {b_rounds / a_seconds:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], help="config overrides (key=value)")
    main_writing_block("OVERHEAD", parser, measure, fence=True)


if __name__ == "__main__":
    main()
