"""Experiment configuration: one flat table of typed keys, shared by the CLI and `flwr run`.

The keys are the same as Flower's run config (`[tool.flwr.app.config]` in pyproject.toml), so an
experiment reads the same whichever way it is started. This module holds the run-wide keys; every
method's keys, and the choices of every key that selects a method, come from the registries
(`fl_defense.registry`), where each method declares its own. Every value is checked here, before any
training starts, and a bad one raises `ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fl_defense.errors import ConfigError
from fl_defense.registry import (
    AGGREGATION_RULES, ATTACKER_TRAININGS, ATTACKS, CATALOG, CLIENT_DEFENSES, DATASETS, MODELS, PURIFIERS,
    STRATEGY_WRAPPERS, TRIGGER_SOURCES, Option, Registry, between, choice, non_negative, positive,
)

DEFENSE_SCHEDULE_RE = re.compile(r"^(end|every:[1-9]\d*|continuous)$")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
PLUGINS_RE = re.compile(r"^([A-Za-z_][\w.]*(,[A-Za-z_][\w.]*)*)?$")

RUN_OPTIONS: dict[str, Option] = {o.key: o for o in (
    Option("data-root", "", "torchvision-format dataset root; empty: search the defaults"),
    Option("download", True, "let torchvision download a dataset that is not found locally"),
    positive("num-clients", 10, "number of simulated clients"),
    Option("clients-per-round", 10, "clients sampled for training each round", check=lambda v: v > 0,
           allowed="an integer >= 1 and <= num-clients"),
    positive("rounds", 20, "federated rounds"),
    positive("local-epochs", 1, "local epochs per round"),
    positive("batch-size", 32, "local mini-batch size"),
    positive("lr", 0.02, "client SGD learning rate"),
    between("momentum", 0.9, "client SGD momentum", 0, 1, "[)"),
    non_negative("weight-decay", 5e-4, "client SGD weight decay"),
    choice("partition", "iid", "how the training set is split across clients", ("iid", "dirichlet")),
    positive("alpha", 0.5, "Dirichlet concentration for label skew (smaller: more skew)"),
    between("malicious-fraction", 0.2, "share of clients that are malicious (seeded, fixed for the run)", 0, 1),
    between("train-fraction", 1.0, "share of the (non-held-out) training set given to clients, for quick runs",
            0, 1, "(]"),
    between("clean-fraction", 0.05, "share of the training set held out, clean, for the server", 0, 1, "()"),
    choice("threat", "malicious-client", "malicious-client: attackers run their own training code; poisoned-data: "
           "the malicious-fraction clients are honest but a third party poisoned their local data",
           ("malicious-client", "poisoned-data")),
    Option("defense-schedule", "end", "when the defense runs: end, every:K rounds (purifiers only), or continuous "
           "(every round: scan until a target is flagged, then screen every client with its trigger and purify the "
           "aggregate when the trigger moves it; purifiers that take a trigger)",
           check=lambda v: bool(DEFENSE_SCHEDULE_RE.match(v)), allowed="end, every:K or continuous"),
    positive("continuous-scan-every", 1, "continuous: rounds between scans of the minority cluster's model until a "
             "target is flagged"),
    positive("continuous-scan-max-gap", 4, "continuous: a scan that flags no label in a round every client took "
             "part in, and that the watch did not call, doubles the rounds to the next scan, up to this many; any "
             "other returns them to continuous-scan-every (1: a scan every continuous-scan-every rounds)"),
    non_negative("continuous-watch-z", 6.0, "continuous: a round the back-off would not scan is scanned anyway when "
                 "its two most alike client updates are this many robust standard deviations above the round's "
                 "pairs (0: no watch; quiet rounds of the default setting reached 3.8, first attacked ones 15-25)"),
    Option("continuous-retest", True, "continuous: a label a scan flags whose trigger moves some clients of the "
           "scanned cluster far beyond the round's median and nobody else (a lone attacker grouped with a benign "
           "client) is tried again in the next round and made known when it moves some of the same clients and "
           "nobody else there; only in rounds every client took part in"),
    non_negative("continuous-apart-z", 0.0, "continuous: in a round every client took part in that no scan is due "
                 "for (the back-off skips it, the watch does not call it), the client whose update stands this many "
                 "robust standard deviations apart from the others (the lowest mean cosine similarity to them) has its "
                 "own model scanned, and a label whose trigger moves that client alone far beyond the round's median "
                 "is re-tested in the next round (continuous-retest): a lone attacker has no partner for the watch "
                 "(0: off; 8 measured: quiet rounds of the default setting reached 5.1 in rounds 1-10 and 8.4 once in "
                 "40, 7.8 under Dirichlet(0.5) label skew; a lone attacker's second round 11-49)"),
    between("screen-margin", 0.2, "continuous: a client is left out when its model's trigger shift toward the "
            "flagged label exceeds the round's median by this much (and by 3 MADs); half of it for a client left "
            "out before", 0, 1, "(]"),
    positive("screen-images", 500, "continuous: clean images (a seeded subset of the server's set) each client's "
             "model is scored on, with and without the trigger"),
    between("continuous-purify-above", 0.05, "continuous: the aggregate is purified when the known trigger moves "
            "this much more of the clean images to its label than on the clean reference model", 0, 1, "[)"),
    non_negative("continuous-refreshes", 3, "continuous: rounds in which a known label's trigger is inverted again on "
                 "the model of the clients the screen left out, until a new one moves them further beyond the clean "
                 "reference models (0: never)"),
    Option("min-replies", 1, "fewest valid client replies a round needs; with fewer the round is skipped and the "
           "global model stays as it was", check=lambda v: v > 0, allowed="an integer >= 1 and <= clients-per-round"),
    positive("round-timeout", 3600.0, "seconds the server waits for a round's replies (Flower's default: an hour); "
             "a client that has not answered by then is left out of that round"),
    non_negative("reply-max-norm", 1000.0, "a client reply whose update of the trainable parameters has a larger L2 "
                 "norm is rejected (0: no limit); benign updates of the default setting have norm 2-6"),
    Option("client-checkpoints", True, "clients also keep their memory (client defense, Neurotoxin) on disk under "
           "<out-dir>/client-state, so `fl-defense run --resume` restores it (simulation, or clients sharing the "
           "server's file system)"),
    Option("seed", 0, "seed of every random choice of the run", check=lambda v: 0 <= v < 2**31,
           allowed="an integer in [0, 2^31)"),
    Option("device", "auto", "torch device; auto: CUDA when present", check=lambda v: bool(DEVICE_RE.match(v)),
           allowed="auto, cpu, cuda, or cuda:N"),
    Option("amp", False, "mixed precision (autocast: float16 with loss scaling on CUDA, bfloat16 on CPU) in the "
           "clients' local training and the server's evaluation; the defenses run in float32"),
    positive("num-cpus", 1.0, "CPUs per simulated client (Ray resources; also its torch threads)"),
    non_negative("num-gpus", 0.0, "GPUs per simulated client, fractions allowed"),
    Option("ray-address", "", "Ray cluster to run the clients on: empty starts a local Ray; 'auto' or 'HOST:PORT' "
           "joins a running cluster (`ray start --head` on one machine, `ray start --address=HOST:PORT` on the "
           "others)", check=lambda v: v in ("", "auto") or bool(re.match(r"^[\w.-]+:\d+$", v)),
           allowed="empty, auto, or HOST:PORT"),
    positive("eval-batch-size", 256, "batch size of the server's evaluation (256: the small CNN evaluates the test set "
             "2x faster on this project's 2-core CPU than at 1000, its activations staying in cache; larger on a GPU)"),
    Option("out-dir", "", "output folder; empty: runs/<dataset>-<attack>-<time>"),
    Option("init-from", "", "a checkpoint (a run's checkpoints/*.pt, or a bare state_dict) the global model starts "
           "from instead of a fresh one; e.g. a clean pre-trained model, attacked from round 1 (BackFed's protocol)"),
    Option("plugins", "", "comma-separated Python modules imported before the config is read, for methods "
           "registered outside the package (they run code: name only modules you trust)",
           check=lambda v: bool(PLUGINS_RE.match(v)), allowed="empty, or module names joined by commas"),
)}

# The order the keys are listed in (mirrors, errors): run-wide keys, and each registry's block where it belongs.
LAYOUT: tuple[str | Registry[Any], ...] = (
    DATASETS, "data-root", "download", MODELS, "num-clients", "clients-per-round", "rounds", "local-epochs",
    "batch-size", "lr", "momentum", "weight-decay", "partition", "alpha", "malicious-fraction", ATTACKS,
    ATTACKER_TRAININGS, "train-fraction", "clean-fraction", "threat", CLIENT_DEFENSES, AGGREGATION_RULES, PURIFIERS,
    "defense-schedule", "continuous-scan-every", "continuous-scan-max-gap", "continuous-watch-z",
    "continuous-retest", "continuous-apart-z", "screen-margin", "screen-images",
    "continuous-purify-above", "continuous-refreshes",
    TRIGGER_SOURCES, STRATEGY_WRAPPERS, "min-replies", "round-timeout", "reply-max-norm",
    "client-checkpoints", "seed", "device", "amp", "num-cpus", "num-gpus", "ray-address", "eval-batch-size", "out-dir",
    "init-from", "plugins",
)

# Keys whose default changed: the value a run ran at when its record was written before the key existed (a benchmark
# cache reads a record without the key at this value, not at today's default; benchmarks/defense_table.py).
FORMER_DEFAULTS: dict[str, Any] = {"continuous-scan-max-gap": 1, "continuous-watch-z": 0.0,
                                   "continuous-retest": False}

# Values kept for what they meant before a key of their own existed: key=value -> the settings it stands for.
ALIASES: dict[tuple[str, str], dict[str, str]] = {
    ("defense", "shadow"): {"defense": "none", "strategy-wrapper": "shadow"},
}


def schema() -> dict[str, Option]:
    """Every config key in LAYOUT order: the run-wide ones and every registered method's."""
    options: dict[str, Option] = {}
    for item in LAYOUT:
        for opt in item.all_options() if isinstance(item, Registry) else [RUN_OPTIONS[item]]:
            if opt.key in options:
                raise ValueError(f"config key {opt.key!r} is declared twice")
            options[opt.key] = opt
    return options


def defaults() -> dict[str, Any]:
    return {k: o.default for k, o in schema().items()}


def load_plugins(spec: Any) -> None:
    """Import the `plugins` modules, whose methods register themselves on import."""
    text = RUN_OPTIONS["plugins"].validate(spec)
    for name in filter(None, text.split(",")):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"config key 'plugins': cannot import {name!r} ({exc})") from None


def _apply_aliases(overrides: dict[str, Any]) -> None:
    for (key, value), settings in ALIASES.items():
        if overrides.get(key) != value:
            continue
        for k, v in settings.items():
            if k != key and overrides.get(k, v) != v:
                raise ConfigError(f"config key '{key}': {value!r} stands for {k}={v}, but {k} is "
                                  f"{overrides[k]!r}; allowed: drop one of the two")
        overrides.update(settings)


def resolve(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the full, checked configuration: defaults updated by `overrides`."""
    overrides = dict(overrides or {})
    load_plugins(overrides.get("plugins", ""))
    _apply_aliases(overrides)
    options = schema()
    cfg = {k: o.default for k, o in options.items()}
    for key, value in overrides.items():
        if key not in options:
            near = difflib.get_close_matches(key, list(options), n=3)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConfigError(f"unknown config key '{key}'; {hint}every key, its default and help: "
                              "simulations/configs/default.toml; methods: fl-defense list")
        cfg[key] = options[key].validate(value)
    _check_run(cfg)
    for registry in CATALOG:
        registry.run_checks(cfg)
    return cfg


def expected_malicious(cfg: Mapping[str, Any]) -> int:
    """Malicious clients expected among the sampled ones: what Krum-style rules are told to tolerate."""
    return int(round(cfg["malicious-fraction"] * cfg["clients-per-round"]))


def _check_run(cfg: Mapping[str, Any]) -> None:
    """The run-wide keys' combinations."""
    n = cfg["clients-per-round"]
    if n > cfg["num-clients"]:
        raise ConfigError(f"config key 'clients-per-round': {n} is more than num-clients ({cfg['num-clients']}); "
                          f"allowed: an integer in [1, num-clients]")
    if cfg["defense-schedule"] == "continuous" and not _takes_trigger(cfg["defense"]):
        raise ConfigError(f"config key 'defense-schedule': continuous screens clients with an inverted trigger, "
                          f"which defense '{cfg['defense']}' does not use; allowed: a defense that takes a trigger "
                          f"({', '.join(n for n in PURIFIERS.choices() if _takes_trigger(n))})")
    if cfg["min-replies"] > n:
        raise ConfigError(f"config key 'min-replies': {cfg['min-replies']} is more than clients-per-round ({n}), "
                          f"so every round would be skipped; allowed: 1..{n}")


def _takes_trigger(defense: str) -> bool:
    """Whether purifier `defense` purifies with an inverted trigger (the continuous schedule screens with it)."""
    from fl_defense.purification.base import TriggerPurifier
    return defense in PURIFIERS and issubclass(PURIFIERS[defense], TriggerPurifier)


def toml_value(value: object) -> str:
    """A config value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def mirror(with_help: bool) -> str:
    """The defaults as a flat TOML table (pyproject's `[tool.flwr.app.config]`; with help, default.toml)."""
    return "".join(f"{k} = {toml_value(o.default)}" + (f"  # {o.help}" if with_help else "") + "\n"
                   for k, o in schema().items())


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse CLI `--set key=value` items into a dict of strings (typed later by `resolve`)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing, binary or malformed file is a ConfigError naming it as `what`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} " + ("is a folder" if p.is_dir() else "does not exist"))
    try:
        return tomllib.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(p)!r} is not a text file (not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a flat TOML table of keys, or one under `[tool.flwr.app.config]`."""
    p = Path(path)
    data = read_toml(p, "config file")
    table: Any = data
    for part in ("tool", "flwr", "app", "config"):
        table = table.get(part) if isinstance(table, dict) else None
    table = table if isinstance(table, dict) else data
    for key, value in table.items():
        if isinstance(value, dict):
            raise ConfigError(f"config file {str(p)!r}: '{key}' is a table; keys must be flat")
    return dict(table)


def schedule_rounds(spec: str, rounds: int) -> list[int]:
    """Rounds (1-based) selected by an `always|never|every:K|window:A-B,...` spec."""
    if spec == "always":
        return list(range(1, rounds + 1))
    if spec == "never":
        return []
    kind, _, arg = spec.partition(":")
    if kind == "every":
        k = int(arg)
        return [r for r in range(1, rounds + 1) if r % k == 0]
    selected: set[int] = set()
    for window in arg.split(","):
        a, b = (int(x) for x in window.split("-"))
        selected.update(range(max(a, 1), min(b, rounds) + 1))
    return sorted(selected)
