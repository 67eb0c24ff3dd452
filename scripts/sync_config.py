"""Rewrite the config tables that mirror fl_defense/config.py: pyproject's Flower run config and
simulations/configs/default.toml. Run after adding or changing a key; tests/test_config.py checks both."""

from __future__ import annotations

import json
from pathlib import Path

from fl_defense.config import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
MARK = "[tool.flwr.app.config]\n"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def main() -> None:
    pyproject = ROOT / "pyproject.toml"
    head = pyproject.read_text().split(MARK)[0]
    body = "\n".join(f"{k} = {toml_value(o.default)}" for k, o in OPTIONS.items())
    pyproject.write_text(f"{head}{MARK}{body}\n")
    lines = ["# The default experiment: Fashion-MNIST, small CNN, 10 clients, 20% malicious BadNets.",
             "# Every key of fl_defense/config.py is here with its default; `fl-defense run --config FILE` reads it.",
             ""]
    lines += [f"{k} = {toml_value(o.default)}  # {o.help}" for k, o in OPTIONS.items()]
    (ROOT / "simulations" / "configs" / "default.toml").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
