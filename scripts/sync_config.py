"""Rewrite the config tables that mirror the registries: pyproject's Flower run config and
simulations/configs/default.toml. Run after adding or changing a key; tests/test_config.py checks both."""

from __future__ import annotations

from pathlib import Path

from fl_defense.config import mirror

ROOT = Path(__file__).resolve().parents[1]
MARK = "[tool.flwr.app.config]\n"
DEFAULT_HEADER = ("# The default experiment: Fashion-MNIST, small CNN, 10 clients, 20% malicious BadNets.\n"
                  "# Every config key (the run-wide ones of fl_defense/config.py and every registered method's) is here "
                  "with its default;\n# `fl-defense run --config FILE` reads it. Written by scripts/sync_config.py.\n\n")


def pyproject_text(current: str) -> str:
    """pyproject.toml with its run-config table rewritten (the table is the file's last)."""
    return current.split(MARK)[0] + MARK + mirror(with_help=False)


def default_toml_text() -> str:
    return DEFAULT_HEADER + mirror(with_help=True)


def main() -> None:
    pyproject = ROOT / "pyproject.toml"
    pyproject.write_text(pyproject_text(pyproject.read_text()))
    (ROOT / "simulations" / "configs" / "default.toml").write_text(default_toml_text())


if __name__ == "__main__":
    main()
