"""Config parsing and validation: defaults, types, ranges, combinations, files, schedules."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_defense.config import load_toml, parse_set, resolve, schedule_rounds, schema
from fl_defense.errors import ConfigError
from fl_defense.registry import CATALOG

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = schema()


def _sync_config():  # noqa: ANN202 - the script as a module
    spec = importlib.util.spec_from_file_location("sync_config", ROOT / "scripts" / "sync_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_resolve_and_match_pyproject_run_config() -> None:
    """`flwr run .` and the CLI must see the same defaults."""
    cfg = resolve()
    flwr_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flwr_cfg == cfg
    assert resolve(flwr_cfg) == cfg


def test_the_mirrors_are_what_the_registries_generate() -> None:
    """pyproject's run config and default.toml are written from the registries (scripts/sync_config.py): a method
    whose options changed without the mirrors being regenerated fails here, help text included."""
    sync = _sync_config()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert sync.pyproject_text(pyproject) == pyproject
    assert sync.default_toml_text() == (ROOT / "simulations" / "configs" / "default.toml").read_text()


def test_every_registered_method_s_options_are_config_keys() -> None:
    """Each registry's key lists exactly its members (and extra values), and every member's options are keys."""
    for registry in CATALOG:
        assert OPTIONS[registry.key].choices == registry.choices()
        for entry in registry:
            assert entry.summary, f"{registry.key}={entry.name} has no one-line description"
            for option in entry.options:
                assert OPTIONS[option.key] is option


def test_strings_from_set_are_typed() -> None:
    cfg = resolve(parse_set(["rounds=7", "lr=0.1", "download=false", "attack=blended"]))
    assert (cfg["rounds"], cfg["lr"], cfg["download"], cfg["attack"]) == (7, 0.1, False, "blended")


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"nope": 1}, "unknown config key 'nope'"),
    ({"rounds": "ten"}, "'rounds'"),
    ({"rounds": 0}, "an integer >= 1"),
    ({"attack": "trojan"}, "one of none, badnets, blended"),
    ({"defense": "shadow", "strategy-wrapper": "none"}, "stands for strategy-wrapper=shadow"),
    ({"plugins": "no_such_module_here"}, "cannot import 'no_such_module_here'"),
    ({"clean-fraction": 1.0}, "(0, 1)"),
    ({"clean-fraction": 0.0}, "(0, 1)"),
    ({"malicious-fraction": 1.5}, "[0, 1]"),
    ({"num-clients": 5, "clients-per-round": 6}, "more than num-clients"),
    ({"target-label": 10}, "0..9"),
    ({"dataset": "gtsrb", "target-label": 43}, "0..42"),
    ({"trigger-size": 29}, "larger than the 28x28"),
    ({"trigger-pattern": "missing.png"}, "does not exist"),
    ({"attack-schedule": "sometimes"}, "window:A-B"),
    ({"threat": "poisoned-data", "boost": 5.0}, "the poisoned clients are honest"),
    ({"threat": "poisoned-data", "attack-schedule": "every:2"}, "allowed: 'always', or threat malicious-client"),
    ({"client-defense": "abl", "rounds": 8}, "abl-isolation-rounds + abl-unlearn-rounds (10) is more than rounds"),
    ({"defense-schedule": "every:0"}, "end, every:K or continuous"),
    ({"device": "tpu"}, "auto, cpu, cuda"),
    ({"download": "maybe"}, "true or false"),
    ({"lr": True}, "a number > 0"),
])
def test_bad_values_name_the_key_and_what_is_allowed(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(overrides)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_set_needs_key_value() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["rounds"])


def test_defense_shadow_is_an_alias_of_the_strategy_wrapper() -> None:
    cfg = resolve({"defense": "shadow"})
    assert (cfg["defense"], cfg["strategy-wrapper"]) == ("none", "shadow")
    assert resolve({"defense": "shadow", "strategy-wrapper": "shadow"}) == cfg


def test_toml_flat_and_flower_layout(tmp_path: Path) -> None:
    flat = tmp_path / "a.toml"
    flat.write_text('rounds = 3\nattack = "blended"\n')
    nested = tmp_path / "b.toml"
    nested.write_text('[tool.flwr.app.config]\nrounds = 4\n')
    assert load_toml(flat) == {"rounds": 3, "attack": "blended"}
    assert load_toml(nested) == {"rounds": 4}
    bad = tmp_path / "c.toml"
    bad.write_text("rounds = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


def test_shipped_default_config_file_resolves() -> None:
    assert resolve(load_toml(ROOT / "simulations" / "configs" / "default.toml")) == resolve()


@pytest.mark.parametrize(("spec", "rounds", "expected"), [
    ("always", 3, [1, 2, 3]),
    ("never", 3, []),
    ("every:3", 10, [3, 6, 9]),
    ("window:2-4", 10, [2, 3, 4]),
    ("window:1-2,5-6", 10, [1, 2, 5, 6]),
    ("window:8-20", 10, [8, 9, 10]),
])
def test_schedules(spec: str, rounds: int, expected: list[int]) -> None:
    assert schedule_rounds(spec, rounds) == expected


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.one_of(
    st.integers(-5, 100), st.floats(allow_nan=True), st.text(max_size=8), st.booleans()), max_size=6))
def test_resolve_either_accepts_or_raises_config_error(overrides: dict) -> None:
    """No input, however odd, escapes as anything but a ConfigError; accepted values keep their types."""
    try:
        cfg = resolve(overrides)
    except ConfigError:
        return
    for key, opt in OPTIONS.items():
        assert isinstance(cfg[key], opt.kind)


def test_the_hard_setting_is_a_named_config_of_the_issue_s_values() -> None:
    cfg = resolve(load_toml(ROOT / "simulations" / "configs" / "hard.toml"))
    assert (cfg["num-clients"], cfg["clients-per-round"], cfg["partition"], cfg["alpha"]) == (100, 10, "dirichlet", 0.5)
    assert (cfg["malicious-fraction"], cfg["rounds"], cfg["attack"]) == (0.2, 60, "badnets")


def test_the_centralised_setting_is_one_honest_client_whose_data_a_third_party_poisoned() -> None:
    from fl_defense.attacks.malicious import ground_truth

    cfg = resolve(load_toml(ROOT / "simulations" / "configs" / "centralised.toml"))
    assert (cfg["num-clients"], cfg["clients-per-round"], cfg["threat"]) == (1, 1, "poisoned-data")
    assert (cfg["poison-rate"], cfg["local-epochs"], cfg["clean-fraction"]) == (0.1, 1, 0.05)
    assert ground_truth(cfg, [0], 1) == ([0], [0])  # its data is poisoned in every round
