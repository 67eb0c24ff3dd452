"""Model purification, selected by name from config (`defense=`); a new defense is one new module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_defense.config import ConfigError
from fl_defense.purification import cnp, fp, ft, mcl, nad, nc_unlearn  # noqa: F401  (registration)
from fl_defense.purification.base import PURIFIERS, CleanSet, Purifier, register


def build_purifier(cfg: Mapping[str, Any]) -> Purifier:
    """The configured purifier; `defense=none` has none, so callers check for it first."""
    name = cfg["defense"]
    if name not in PURIFIERS:
        raise ConfigError(f"config key 'defense': {name!r} is not a purifier; one of {', '.join(PURIFIERS)}")
    return PURIFIERS[name](cfg)


__all__ = ["PURIFIERS", "CleanSet", "Purifier", "build_purifier", "register"]
