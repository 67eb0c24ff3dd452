"""Write README.md's table of bad inputs and the message each gets, by running the CLI on the cases of
tests/test_cli.py (BAD_INPUTS), so the table shows what the program says today. Run after changing a message."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = ("<!-- BAD-INPUTS:BEGIN -->", "<!-- BAD-INPUTS:END -->")


def main() -> None:
    rows = ["| command | exit status | message |", "|---|---|---|"]
    cases = runpy.run_path(str(ROOT / "tests" / "test_cli.py"))  # its BAD_INPUTS and the files they name
    with tempfile.TemporaryDirectory() as tmp:
        cases["write_bad_files"](Path(tmp))
        for args, _ in cases["BAD_INPUTS"]:
            run = [a.replace("{tmp}", tmp) for a in args]
            proc = subprocess.run([sys.executable, "-m", "fl_defense.simulations.cli", *run], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            message = " ".join(proc.stderr.split()).removeprefix("fl-defense: error: ").replace(tmp, "<tmp>")
            shown = " ".join(a.replace("{tmp}", "<tmp>") for a in args)
            rows.append(f"| `fl-defense {shown}` | {proc.returncode} | {message.replace('|', chr(92) + '|')} |")
            print(rows[-1], flush=True)
    readme = ROOT / "README.md"
    pattern = re.compile(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), re.S)
    table = "\n".join(rows)
    readme.write_text(pattern.sub(lambda _: f"{MARK[0]}\n{table}\n{MARK[1]}", readme.read_text()))


if __name__ == "__main__":
    main()
