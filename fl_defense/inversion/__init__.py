"""Trigger sources (`inversion=`, one module each: the NC scan, CNP's ANP guess) and the pieces they share:
Neural Cleanse per label, the all-label scan and its detection rule, the clean reference model."""

from fl_defense.inversion.base import Finding, TriggerSource
from fl_defense.inversion.budget import inversion_images, nc_settings
from fl_defense.inversion.neural_cleanse import LabelInversion, NCSettings, anomaly_indices, invert
from fl_defense.inversion.reference import fresh_copy, train_reference, transfer_rates
from fl_defense.inversion.scan import DetectionRule, ScanResult, scan

__all__ = [
    "DetectionRule", "Finding", "LabelInversion", "NCSettings", "ScanResult", "TriggerSource", "anomaly_indices",
    "fresh_copy", "invert", "inversion_images", "nc_settings", "scan", "train_reference", "transfer_rates",
]
