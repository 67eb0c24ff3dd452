"""Shared by the benchmarks: real Fashion-MNIST, the server's clean set, centrally trained models."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl_defense.attacks import Attack, evaluation_attack
from fl_defense.config import resolve
from fl_defense.data import ImageData, cached_dataset, hold_out, to_float
from fl_defense.models import BackdoorModel, build_model
from fl_defense.provenance import code_version, describe
from fl_defense.purification import CleanSet
from fl_defense.training import train_local

__all__ = ["CACHE", "NOTHING_CACHED", "README", "Emit", "Setting", "central_model", "code_version", "kill_after_round",
           "main_writing_block", "mean_std", "printed_block", "provenance", "start_run", "wait_for_round",
           "write_block"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
README = HERE / "README.md"
Emit = Callable[[str], None]  # a benchmark's print for the lines of its README block
NOTHING_CACHED = 3  # exit status of a `--report-only` run that found no cached run to report (its block is kept)


def provenance() -> str:
    """The line under every table a benchmark writes: commit, versions, machine."""
    return describe()


def mean_std(values: list[float], digits: int = 4) -> str:
    """`mean +/- std` (sample std) over seeds, the bare value for one seed, "-" for none."""
    if not values:
        return "-"
    t = torch.tensor(values, dtype=torch.float64)
    spread = f" +/- {float(t.std()):.{digits}f}" if len(values) > 1 else ""
    return f"{float(t.mean()):.{digits}f}{spread}"


def write_block(name: str, text: str, readme: Path = README) -> None:
    """Replace what stands between `<!-- NAME:BEGIN -->` and `<!-- NAME:END -->` in benchmarks/README.md with `text`
    (the markers are added at the end the first time): every table there is written by its script."""
    begin, end = f"<!-- {name}:BEGIN -->", f"<!-- {name}:END -->"
    current = readme.read_text()
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin not in current:
        readme.write_text(current.rstrip() + "\n\n" + block + "\n")
        return
    readme.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, current, flags=re.S))


@contextlib.contextmanager
def printed_block(name: str, *, fence: bool, write: bool = True,
                  readme: Path = README) -> Iterator[Emit]:
    """Yields `emit`, the script's print for its results: each line goes to stdout and, once the block ends without
    an error, into benchmarks/README.md's block `name` (in a code fence when `fence`, for output that is not a
    Markdown table) with the provenance line under it: the block is the script's own output, never a copy made by
    hand. What else is printed meanwhile (a run's progress) stays out. `write=False` (a dry run) only prints."""
    lines: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    yield emit
    if write:
        text = "\n".join(lines).rstrip()
        write_block(name, (f"```\n{text}\n```" if fence else text) + "\n\n" + provenance(), readme)


def main_writing_block(name: str, parser: argparse.ArgumentParser,
                       measure: Callable[[argparse.Namespace, Emit], None], *, fence: bool) -> None:
    """A benchmark's main: its `parser` gains `--dry`, and what `measure` emits becomes the block `name`."""
    parser.add_argument("--dry", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    with printed_block(name, fence=fence, write=not args.dry) as emit:
        measure(args, emit)


def start_run(settings: dict[str, Any], out: Path, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """`fl-defense run --out OUT --set ...` in a process group of its own (as a terminal's foreground job)."""
    args = [sys.executable, "-m", "fl_defense.simulations.cli", "run", "--out", str(out)]
    for k, v in settings.items():
        args += ["--set", f"{k}={v}"]
    # the server's float results depend on its torch threads: the same as this process's
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr, env=env)


def wait_for_round(proc: subprocess.Popen[bytes], out: Path, after: int, seconds: float = 300) -> int:
    """The round of the run's resume checkpoint once it holds `after` or later (0: not within `seconds`, or the
    process ended first)."""
    ckpt = out / "checkpoints" / "resume.pt"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file() and (reached := int(torch.load(ckpt, weights_only=True)["round"])) >= after:
            return reached
        time.sleep(0.05)
    return 0


def kill_after_round(settings: dict[str, Any], out: Path, after: int) -> int:
    """Start a run, SIGKILL its process group once its resume checkpoint holds round `after` or later, and return
    that round (0: it never got there within 300 s)."""
    proc = start_run(settings, out)
    killed_after = wait_for_round(proc, out, after)
    if killed_after:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return killed_after


@dataclass
class Setting:
    """A model trained on real data (backdoored or clean), its trigger, and the server's clean set."""

    cfg: dict[str, Any]
    model: BackdoorModel
    attack: Attack
    clean: CleanSet
    data: ImageData


def central_model(attack: str, seed: int, target: int, n_train: int = 20000, epochs: int = 2,
                  poison_rate: float = 0.1) -> Setting:
    """Train the default model centrally (cached on disk); `attack='none'` gives a clean model.

    The trigger returned for a clean model is the BadNets one, so ASR measures the trigger's base rate. Until
    2026-12-06 the model was built before the seed was set, so its initial weights depended on what the process had
    drawn before (retrained in another order, 13 of the detection benchmark's 33 models came out different, the
    largest weight apart by 1.9-6.3); cached files of that time have no `-seeded` in their name and are not reused.
    """
    cfg = resolve({"attack": attack, "seed": seed, "target-label": target, "poison-rate": poison_rate,
                   "device": "cpu"})
    data = cached_dataset(cfg["dataset"], "", True)
    clean_idx, rest = hold_out(len(data.train_y), cfg["clean-fraction"], seed)
    atk = evaluation_attack(cfg, data.spec.shape, data.spec.num_classes)
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed, not from what ran before
        torch.manual_seed(seed)
        model = build_model(cfg["model"], data.spec)
    path = CACHE / f"{attack}-s{seed}-t{target}-n{n_train}-e{epochs}-p{poison_rate}-seeded.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        idx = torch.from_numpy(rest[:n_train])
        train_local(model, data.train_x, data.train_y, idx, epochs=epochs, batch_size=64, lr=0.05, momentum=0.9,
                    weight_decay=5e-4, generator=g, device=torch.device("cpu"),
                    batch_hook=None if attack == "none" else atk.poison_batch)
        CACHE.mkdir(exist_ok=True)
        torch.save(model.state_dict(), path)
    clean = CleanSet(to_float(data.train_x[torch.from_numpy(clean_idx)]), data.train_y[torch.from_numpy(clean_idx)])
    return Setting(cfg, model.eval(), atk, clean, data)
