"""Provenance: a number names the code that made it, and says when part of that code came from another checkout."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from fl_defense import provenance


def test_this_checkout_runs_its_own_server_clients_and_simulations() -> None:
    assert provenance.foreign() == []
    assert not provenance.code_version().endswith("+mixed")


def test_a_server_imported_from_another_checkout_marks_the_code_version_mixed(monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    """What a git worktree run with the main checkout's editable install gets: its own fl_defense, the other
    checkout's fl_defense.server."""
    real = importlib.util.find_spec
    elsewhere = tmp_path / "main" / "server" / "__init__.py"

    def find_spec(name: str, *args: object) -> object:
        return SimpleNamespace(origin=str(elsewhere)) if name == "fl_defense.server" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert provenance.foreign() == [f"fl_defense.server from {elsewhere.parent}"]
    made_by = provenance.provenance()
    assert made_by["code_version"].endswith("+mixed") and made_by["foreign"] == provenance.foreign()
    assert "+mixed" in provenance.describe(made_by)


def test_the_code_version_ignores_a_benchmarks_readme_figure_and_records_but_not_code(monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    record = "benchmarks/runs/badnets-s0/results.json"
    files = {"code.py": "x = 1\n", "README.md": "# r\n", "plot.png": "png", record: "{}"}
    (tmp_path / record).parent.mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    monkeypatch.setattr(provenance, "foreign", list)  # the package's subpackages are not in this repository
    versions = []
    for name, text in (("README.md", "# new block\n"), ("plot.png", "new figure"), (record, '{"round": 1}'),
                       ("code.py", "x = 2\n")):
        (tmp_path / name).write_text(text)
        provenance.commit.cache_clear()
        versions.append(provenance.code_version())
    provenance.commit.cache_clear()
    head = versions[0]
    assert len(head) == 12 and versions[1] == versions[2] == head, "a README block, a figure or a record is not code"
    assert versions[3].startswith(head + "+"), "a change to code is"
