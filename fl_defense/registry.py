"""Registries of selectable methods: a method is one file that registers itself, with its own options.

Each registry belongs to one config key (`attack`, `defense`, `aggregation`, ...) and to one package. The
first time a registry is asked for its members it imports every module of its package, so a new method is
a new file in that package and nothing else; a module outside the package registers the same way once the
`plugins` key imports it. A member declares its options (flat config keys: type, default, range, help),
which exist in every run's config whichever member is selected, and the cross-key checks that apply when
it is selected. `fl_defense.config` builds the whole config schema, the choices, the help and the
generated config mirrors from these registries.

The registries are declared here, in one catalog, in the order the config lists them. Aggregation rules
and strategy wrappers are Flower strategies, so their packages are the server's; nothing here imports
them until their registry is first used.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fl_defense.errors import ConfigError

T = TypeVar("T")
ValueCheck = Callable[[Any], bool]
CrossCheck = Callable[[Mapping[str, Any]], None]  # raises ConfigError naming the key and what is allowed

KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One flat config key: its default (whose type is the key's), a help line, and the values it accepts."""

    key: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    check: ValueCheck | None = None
    allowed: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """What the key accepts, for error messages."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return self.allowed or KINDS[self.kind]

    def validate(self, value: Any) -> Any:
        """The value as the key's type (from TOML, a --set string or Flower's run config), or a ConfigError."""
        value = self._coerce(value)
        if (self.choices and value not in self.choices) or (self.check and not self.check(value)):
            raise ConfigError(f"config key '{self.key}': {value!r} is not {self.describe()}")
        return value

    def _coerce(self, value: Any) -> Any:
        kind = self.kind
        if isinstance(value, str) and kind is not str:
            text = value.strip().lower()
            try:
                if kind is bool:
                    if text not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    return text in ("true", "1", "yes")
                return float(text) if kind is float else int(text)
            except ValueError:
                raise ConfigError(f"config key '{self.key}': {value!r} is not {self.describe()}") from None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(f"config key '{self.key}': {value!r} is not {self.describe()}")
        return value


def _amount(default: Any, relation: str) -> str:
    return f"{'an integer' if isinstance(default, int) else 'a number'} {relation}"


def positive(key: str, default: float, help: str) -> Option:
    """A key that must be > 0 (an integer >= 1 for integer defaults)."""
    relation = ">= 1" if isinstance(default, int) else "> 0"
    return Option(key, default, help, check=lambda v: v > 0, allowed=_amount(default, relation))


def non_negative(key: str, default: float, help: str) -> Option:
    """A key that must be >= 0."""
    return Option(key, default, help, check=lambda v: v >= 0, allowed=_amount(default, ">= 0"))


def between(key: str, default: float, help: str, low: float, high: float, bounds: str = "[]") -> Option:
    """A number in an interval; `bounds` says which ends are closed: "[]", "()", "(]" or "[)"."""
    lo_closed, hi_closed = bounds[0] == "[", bounds[1] == "]"

    def check(v: float) -> bool:
        return (v >= low if lo_closed else v > low) and (v <= high if hi_closed else v < high)

    return Option(key, default, help, check=check, allowed=f"a number in {bounds[0]}{low:g}, {high:g}{bounds[1]}")


def choice(key: str, default: str, help: str, choices: Sequence[str]) -> Option:
    return Option(key, default, help, choices=tuple(choices))


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered method: its name, the class or factory, a one-line description, its options and checks."""

    name: str
    obj: T
    summary: str
    options: tuple[Option, ...]
    checks: tuple[CrossCheck, ...]


class Registry(Generic[T]):
    """The methods selectable by one config key, loaded from one package on first use (see the module docstring).

    `extra` are values of the key that are not members ("none", "auto"); `options` and `checks` belong to the
    whole family (the trigger keys every attack reads), the checks running whatever member is selected.
    """

    def __init__(self, key: str, what: str, package: str, *, default: str, help: str, extra: Sequence[str] = (),
                 options: Sequence[Option] = (), checks: Sequence[CrossCheck] = ()) -> None:
        self.key, self.what, self.package = key, what, package
        self.default, self.help, self.extra = default, help, tuple(extra)
        self.options, self.checks = list(options), list(checks)
        self._entries: dict[str, Entry[T]] = {}
        self._loaded = False

    def register(self, name: str, *, options: Sequence[Option] = (), checks: Sequence[CrossCheck] = (),
                 summary: str = "") -> Callable[[T], T]:
        """Decorator: make a class or factory selectable as `name`; a class gets `name` as its attribute."""

        def add(obj: T) -> T:
            if name in self._entries or name in self.extra:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, summary or (doc[0] if doc else ""), tuple(options), tuple(checks))
            return obj

        return add

    def family(self, *, options: Sequence[Option] = (), checks: Sequence[CrossCheck] = ()) -> None:
        """Declare the options and checks the whole family shares (from the family's base module)."""
        self.options.extend(options)
        self.checks.extend(checks)

    def load(self) -> None:
        """Import every module of the package once, so that every method in it has registered."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            importlib.import_module(f"{self.package}.{module}")

    @property
    def entries(self) -> dict[str, Entry[T]]:
        """The members by name (sorted: the order modules happen to be imported in must not show)."""
        self.load()
        return dict(sorted(self._entries.items()))

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self.entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> T:
        if name not in self.entries:
            raise ConfigError(f"config key '{self.key}': {name!r} is not one of {', '.join(self.choices())}")
        return self.entries[name].obj

    def choices(self) -> tuple[str, ...]:
        return (*self.extra, *self.entries)

    def selected(self, cfg: Mapping[str, Any]) -> Entry[T] | None:
        """The member the config selects (None for an extra value such as "none")."""
        return self.entries.get(cfg[self.key])

    def key_option(self) -> Option:
        """The selecting key itself, its choices the registered names."""
        return Option(self.key, self.default, f"{self.help}: {', '.join(self.choices())}", choices=self.choices())

    def all_options(self) -> list[Option]:
        """The key, the family's options, then every member's, members by name."""
        self.load()
        return [self.key_option(), *self.options, *(o for e in self for o in e.options)]

    def run_checks(self, cfg: Mapping[str, Any]) -> None:
        """The family's checks, then the selected member's."""
        self.load()
        entry = self.selected(cfg)
        for check in (*self.checks, *(entry.checks if entry else ())):
            check(cfg)


DATASETS: Registry[Any] = Registry(
    "dataset", "dataset", "fl_defense.data", default="fashion-mnist", help="image dataset")
MODELS: Registry[Any] = Registry(
    "model", "model", "fl_defense.models", default="auto", extra=("auto",),
    help="network; auto: cnn for 1x28x28, resnet18 for 3x32x32")
ATTACKS: Registry[Any] = Registry(
    "attack", "attack", "fl_defense.attacks", default="badnets", extra=("none",),
    help="backdoor trigger planted by malicious clients")
ATTACKER_TRAININGS: Registry[Any] = Registry(
    "attack-training", "attacker training", "fl_defense.attacks", default="plain",
    help="how malicious clients train on their poisoned batches")
CLIENT_DEFENSES: Registry[Any] = Registry(
    "client-defense", "client defense", "fl_defense.client_defenses", default="none",
    help="training code of honest clients (a training-time defense, or none: plain SGD)")
AGGREGATION_RULES: Registry[Any] = Registry(
    "aggregation", "aggregation rule", "fl_defense.server.aggregation", default="fedavg",
    help="the server's aggregation rule")
PURIFIERS: Registry[Any] = Registry(
    "defense", "purifier", "fl_defense.purification", default="none", extra=("none",),
    help="server-side defense, a purifier run on the aggregated model on the rounds of defense-schedule "
    "(defense=shadow is an alias of strategy-wrapper=shadow)")
TRIGGER_SOURCES: Registry[Any] = Registry(
    "inversion", "trigger source", "fl_defense.inversion", default="nc+warp+blend",
    help="how the server finds the trigger and the target label for the purifiers that need them")
STRATEGY_WRAPPERS: Registry[Any] = Registry(
    "strategy-wrapper", "strategy wrapper", "fl_defense.server.wrappers", default="none", extra=("none",),
    help="a server strategy wrapper that defends in every round's aggregation")

CATALOG: tuple[Registry[Any], ...] = (DATASETS, MODELS, ATTACKS, ATTACKER_TRAININGS, CLIENT_DEFENSES,
                                      AGGREGATION_RULES, PURIFIERS, TRIGGER_SOURCES, STRATEGY_WRAPPERS)
