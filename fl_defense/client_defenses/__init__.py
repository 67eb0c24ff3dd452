"""Honest clients' training code by name (`client-defense`); a new training-time defense is one new module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_defense.client_defenses import abl, dbd, plain  # noqa: F401  (registration)
from fl_defense.client_defenses.base import CLIENT_DEFENSES, ClientDefense, Memory, register


def build_client_defense(cfg: Mapping[str, Any]) -> ClientDefense:
    """The configured honest training code."""
    return CLIENT_DEFENSES[cfg["client-defense"]](cfg)


__all__ = ["CLIENT_DEFENSES", "ClientDefense", "Memory", "build_client_defense", "register"]
