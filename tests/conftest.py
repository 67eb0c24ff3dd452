"""Shared fixtures: small, real configurations."""

from __future__ import annotations

from typing import Any

import pytest

from fl_defense.config import resolve


@pytest.fixture
def small_cfg() -> dict[str, Any]:
    """A tiny but real federated setting on Fashion-MNIST: 4 clients on 5% of the data."""
    return resolve({"num-clients": 4, "clients-per-round": 4, "train-fraction": 0.05, "rounds": 2,
                    "malicious-fraction": 0.25, "device": "cpu"})
