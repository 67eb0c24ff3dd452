"""What one run process holds while it runs: its folder, locked against a second writer, and the signals that
end it. Ctrl-C (SIGINT) and SIGTERM (`kill`, `timeout`, a cluster scheduler) end the run at once with one line,
exit status 130 or 143 (128 + the signal, as a shell reports it), and a folder `fl-defense run --resume`
continues.

Without the handlers a SIGINT stops Ray but leaves Flower's ServerApp thread (not a daemon) running, and the
process hangs; a SIGTERM reached the handlers Ray installs when it starts (a `sys.exit` in Python and absl's
C++ failure handler), which printed a C++ stack banner and a Flower traceback and ended with exit status 134.
Ours stop Ray and end the process without waiting for that thread; they must be installed after Ray has
started (`fl_defense.simulations.runner.start_ray`). Ray is stopped by killing the processes it started (this
process's descendants), not by `ray.shutdown()`: while that shut this process's Ray worker down, Flower's threads
still called Ray, and Ray's C++ core then ended the process with exit status 1 and a "core worker has already
been shutdown" line (seen once in a full test suite on a loaded machine, SIGINT: 1 instead of 130). Exiting
without stopping Ray is not enough: Ray's dashboard and runtime-env agents outlived the process (seen here).
The checkpoints are written atomically (`fl_defense.files`), so whatever round the signal lands in, the folder
holds the last completed round.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from fl_defense.errors import ConfigError
from fl_defense.files import ensure_writable_folder
from fl_defense.server import checkpoint

LOCK = ".fl-defense.lock"
RUN_FILES = ("results.json", "checkpoints", "tensorboard", "client-state", "plot.png")  # what a run writes there
RAY_STOP_SECONDS = 20.0
STOPPED_BY = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}


def prepare(out_dir: Path, overwrite: bool) -> None:
    """Make the held `out_dir` ready for a new run: it may hold no earlier run unless `overwrite` (then the earlier
    run's files go, so two runs never mix in one results.json or TensorBoard folder)."""
    earlier = [name for name in RUN_FILES if (out_dir / name).exists()]
    if earlier and not overwrite:
        raise ConfigError(f"--out {str(out_dir)!r} already holds a run ({', '.join(earlier)}); continue it with "
                          f"--resume {out_dir}, or pass --overwrite to replace it")
    for name in earlier:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextmanager
def hold(out_dir: Path) -> Iterator[None]:
    """Lock the run folder for this process; a second run on it is a ConfigError, one line naming its holder."""
    ensure_writable_folder(out_dir, "run folder")
    handle = open(out_dir / LOCK, "a+")  # noqa: SIM115 - held open until the run ends
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"run folder {str(out_dir)!r} is in use by a running fl-defense (pid {holder}); wait "
                              f"for it to end or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def descendants(pid: int) -> list[int] | None:
    """The processes below `pid` (children first), from /proc; None where there is no /proc (not Linux)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not (proc / str(pid)).is_dir():
        return None
    for stat in proc.glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(0), [])
        found += below
        todo += below
    return found


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _stop_ray() -> None:
    """SIGKILL every process this one started (Ray's, all of them); where /proc is missing, `ray.shutdown()` for at
    most RAY_STOP_SECONDS."""
    pids = descendants(os.getpid())
    if pids is None:
        stopper = threading.Thread(target=_shutdown_ray, daemon=True)
        stopper.start()
        stopper.join(RAY_STOP_SECONDS)
        return
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def exit_status(signum: int) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


@contextmanager
def stop_on_signals(out_dir: Path) -> Iterator[None]:
    """On SIGINT or SIGTERM: one line, Ray's processes killed (`_stop_ray`), exit 128 + the signal; a second
    signal exits at once. Outside the main thread (signals reach only that one) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in STOPPED_BY:
            signal.signal(sig, lambda *_: os._exit(exit_status(signum)))
        resumable = (out_dir / "checkpoints" / checkpoint.NAME).is_file()
        then = f"continue with: fl-defense run --resume {out_dir}" if resumable else "no round had finished"
        print(f"fl-defense: {STOPPED_BY[signal.Signals(signum)]}; {then}", file=sys.stderr, flush=True)
        logging.getLogger("flwr").disabled = True  # its threads would log the client tasks this stop cuts short
        _stop_ray()
        sys.stdout.flush()
        os._exit(exit_status(signum))

    previous = {sig: signal.signal(sig, stop) for sig in STOPPED_BY}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
