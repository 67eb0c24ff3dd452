"""Trigger inversion: Neural Cleanse per label, and the all-label scan with MAD anomaly detection."""

from fl_defense.inversion.neural_cleanse import LabelInversion, NCSettings, anomaly_indices, invert
from fl_defense.inversion.scan import ScanResult, scan

__all__ = ["LabelInversion", "NCSettings", "ScanResult", "anomaly_indices", "invert", "scan"]
