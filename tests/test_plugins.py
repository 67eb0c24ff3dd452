"""A method is one file: throw-away methods registered from a test module (`plugin_example`: an attack, an
aggregation rule with state, a purifier) go through config checking, `fl-defense list`, a short simulation
through Flower and Ray, a SIGKILL and `--resume`, with nothing else added anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from benchmarks.common import kill_after_round
from fl_defense.config import resolve, schema
from fl_defense.errors import ConfigError
from fl_defense.registry import CATALOG
from fl_defense.simulations.cli import describe_methods, main
from fl_defense.simulations.runner import run_experiment

HERE = Path(__file__).resolve().parent
SETTINGS = {"plugins": "plugin_example", "attack": "toy-corner", "aggregation": "toy-decay", "defense": "toy-head",
            "defense-schedule": "every:2", "num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05,
            "rounds": 4, "malicious-fraction": 0.25, "device": "cpu", "attack-training": "neurotoxin"}


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plugin module importable here, in subprocesses and in Ray's workers (PYTHONPATH); afterwards the
    registries are as the package left them, so the other tests see only the package's methods."""
    for registry in CATALOG:
        registry.load()
    saved = {id(r): dict(r._entries) for r in CATALOG}  # noqa: SLF001 - a test restores what it registered
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(HERE))
    yield
    for registry in CATALOG:
        registry._entries = saved[id(registry)]  # noqa: SLF001
    sys.modules.pop("plugin_example", None)


@pytest.mark.usefixtures("plugin")
def test_plugin_methods_are_checked_listed_and_mirrored_in_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="'attack': 'toy-corner' is not one of"):
        resolve({"attack": "toy-corner"})  # not imported yet
    cfg = resolve(SETTINGS)
    assert (cfg["toy-corner-size"], cfg["toy-decay"], cfg["toy-head-lr"]) == (3, 0.1, 0.05)
    assert {"toy-corner-size", "toy-decay", "toy-head-lr"} <= set(schema())
    with pytest.raises(ConfigError, match="config key 'toy-decay': 0.3 x 4 rounds"):
        resolve({**SETTINGS, "toy-decay": 0.3})  # the rule's own cross-key check
    with pytest.raises(ConfigError, match="config key 'toy-corner-size': 0 is not an integer >= 1"):
        resolve({**SETTINGS, "toy-corner-size": 0})
    listing = describe_methods()
    assert "toy-corner: a white square" in listing and "[toy-decay]" in listing and "toy-head:" in listing
    assert main(["list", "--plugins", "plugin_example"]) == 0 and "toy-head-lr" in capsys.readouterr().out


@pytest.mark.simulation
@pytest.mark.usefixtures("plugin")
def test_plugin_methods_run_through_flower_and_ray_and_resume_after_sigkill(tmp_path: Path) -> None:
    """Straight, and SIGKILLed after round 2 then resumed: the same rounds and defense calls, the rule's state (its
    step shrinks with every round it has seen) and the Neurotoxin attacker's memory (client-state/) carried over
    the resume."""
    straight = run_experiment(resolve({**SETTINGS, "out-dir": str(tmp_path / "a")}), tmp_path / "a")
    steps = [row["aggregation"]["step"] for row in straight["rounds"][1:]]
    assert steps == pytest.approx([1.0, 0.9, 0.8, 0.7])
    assert [d["round"] for d in straight["defense"]] == [2, 4] and all(d["purified"] for d in straight["defense"])
    assert straight["rounds"][-1]["ba"] > 0.5

    out = tmp_path / "b"
    killed_after = kill_after_round(SETTINGS, out, 2)
    assert 2 <= killed_after < 4, "the run was killed mid-way"
    assert main(["run", "--resume", str(out)]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert [(r["round"], r["ba"], r["asr"]) for r in resumed["rounds"]] == \
        [(r["round"], r["ba"], r["asr"]) for r in straight["rounds"]]
    assert [row["aggregation"]["step"] for row in resumed["rounds"][1:]] == pytest.approx(steps)
    assert [(d["round"], d["ba_after"], d["asr_after"]) for d in resumed["defense"]] == \
        [(d["round"], d["ba_after"], d["asr_after"]) for d in straight["defense"]]
    assert (out / "client-state").is_dir()


def test_the_readme_s_worked_example_is_a_working_purifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          bd) -> None:  # noqa: ANN001 - fixture
    """The purifier file of the README's "Adding a method", as a plugin: selectable, and it trains the head."""
    readme = (HERE.parent / "README.md").read_text()
    block = readme.split("A purifier, `fl_defense/purification/head_ft.py`:", 1)[1].split("```python\n", 1)[1]
    (tmp_path / "readme_head_ft.py").write_text(block.split("```", 1)[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    for registry in CATALOG:
        registry.load()
    saved = {id(r): dict(r._entries) for r in CATALOG}  # noqa: SLF001
    try:
        from fl_defense.purification import build_purifier

        cfg = resolve({"plugins": "readme_head_ft", "defense": "head-ft", "head-ft-lr": 0.1})
        out = build_purifier(cfg).apply(bd.model, bd.clean, None, torch.device("cpu"), torch.Generator())
        before, after = bd.model.state_dict(), out.state_dict()
        assert not torch.equal(before["head.weight"], after["head.weight"])
        assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))
    finally:
        for registry in CATALOG:
            registry._entries = saved[id(registry)]  # noqa: SLF001
        sys.modules.pop("readme_head_ft", None)


def test_the_library_imports_no_flower() -> None:
    """The algorithms (everything of fl_defense but its server, clients and simulations subpackages) load
    without Flower, in a fresh interpreter."""
    modules = ["fl_defense.attacks", "fl_defense.aggregation", "fl_defense.client_defenses", "fl_defense.data",
               "fl_defense.defense", "fl_defense.inversion", "fl_defense.metrics", "fl_defense.models",
               "fl_defense.purification", "fl_defense.protocol", "fl_defense.training"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "from fl_defense.registry import ATTACKS, PURIFIERS, TRIGGER_SOURCES, CLIENT_DEFENSES, MODELS\n"
            + "for r in (ATTACKS, PURIFIERS, TRIGGER_SOURCES, CLIENT_DEFENSES, MODELS): r.load()\n"
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flwr'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
