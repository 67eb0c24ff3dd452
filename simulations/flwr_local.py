"""`python -m fl_defense.simulations.flwr_local stop`: end the Flower processes that `flwr run .` started for this
checkout (a local `flower-superlink`, its `flower-superexec` and app processes), and no others.

`flwr run .` starts a local SuperLink and leaves it running after the run. Every process it starts inherits the
`FLWR_HOME` the README sets (`$PWD/.flwr`), so those processes are found by that variable in their environment;
`pkill -f flower-superlink` would also end every other SuperLink on the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def processes_with_home(home: Path) -> list[int]:
    """Pids of this user's processes whose environment holds FLWR_HOME=`home` (this one excluded)."""
    needle = f"FLWR_HOME={home}".encode()
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(d) != os.getpid() and needle in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                found.append(int(d))
        except OSError:  # gone, or another user's
            pass
    return found


def stop(home: Path, grace_s: float = 10.0) -> list[int]:
    """SIGTERM the processes of `home`, SIGKILL those left after `grace_s`; returns the pids that were found."""
    pids = processes_with_home(home)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_with_home(home):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while processes_with_home(home) and time.monotonic() < deadline:
            time.sleep(0.2)
    return pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl_defense.simulations.flwr_local", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["stop"])
    p.add_argument("--home", type=Path, default=None, help="the FLWR_HOME of the run (default: $FLWR_HOME)")
    args = p.parse_args(argv)
    home = args.home or (Path(os.environ["FLWR_HOME"]) if os.environ.get("FLWR_HOME") else None)
    if home is None:
        print("flwr_local: set FLWR_HOME (as for `flwr run .`) or pass --home", file=sys.stderr)
        return 2
    pids = stop(home)
    print(f"flwr_local: stopped {len(pids)} process(es) of FLWR_HOME={home}" + (f": {pids}" if pids else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
