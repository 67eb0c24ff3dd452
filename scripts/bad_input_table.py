"""Write README.md's table of bad inputs and the message each gets, by running the CLI on the cases of
tests/test_cli.py (BAD_INPUTS), so the table shows what the program says today. Run after changing a message."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = ("<!-- BAD-INPUTS:BEGIN -->", "<!-- BAD-INPUTS:END -->")


def cases() -> list[tuple[list[str], str]]:
    spec = importlib.util.spec_from_file_location("test_cli", ROOT / "tests" / "test_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BAD_INPUTS


def main() -> None:
    rows = ["| command | exit status | message |", "|---|---|---|"]
    for args, _ in cases():
        proc = subprocess.run([sys.executable, "-m", "fl_defense.simulations.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        message = " ".join(proc.stderr.split()).removeprefix("fl-defense: error: ").replace("|", "\\|")
        rows.append(f"| `fl-defense {' '.join(args)}` | {proc.returncode} | {message} |")
        print(rows[-1], flush=True)
    readme = ROOT / "README.md"
    pattern = re.compile(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), re.S)
    table = "\n".join(rows)
    readme.write_text(pattern.sub(lambda _: f"{MARK[0]}\n{table}\n{MARK[1]}", readme.read_text()))


if __name__ == "__main__":
    main()
