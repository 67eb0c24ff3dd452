"""Honest clients' training code by name (`client-defense`); a training-time defense is one module of this package."""

from fl_defense.client_defenses.base import ClientDefense, Memory, build_client_defense

__all__ = ["ClientDefense", "Memory", "build_client_defense"]
