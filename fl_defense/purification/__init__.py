"""Model purification, selected by name from config (`defense=`); a purifier is one module of this package."""

from fl_defense.purification.base import CleanSet, CleanSetPurifier, Purifier, TriggerPurifier, build_purifier

__all__ = ["CleanSet", "CleanSetPurifier", "Purifier", "TriggerPurifier", "build_purifier"]
