"""The run-time benchmark splits a run's wall time into phases that add up to it, from the run's own records."""

from __future__ import annotations

import pytest

from benchmarks.run_time import phases


def test_a_runs_seconds_split_by_phase_add_up_to_its_wall_time() -> None:
    results = {
        "rounds": [{"round": 0, "eval_seconds": 1.0},
                   {"round": 1, "seconds": 50.0, "eval_seconds": 1.5, "continuous": {"defense_seconds": 44.0}},
                   {"round": 2, "seconds": 7.0, "eval_seconds": 1.5, "continuous": {"defense_seconds": 0.5}}],
        "defense": [{"round": 1, "scanned": "cluster", "flagged": [0], "inversion_seconds": 30.0},
                    {"round": 1, "purified": True, "inversion_seconds": 0.0, "purify_seconds": 10.0}],
    }
    split = phases(70.0, results)
    assert split == pytest.approx({"start and stop": 70.0 - 12.5 - 44.5 - 4.0, "client training": 12.5,
                                   "evaluation": 4.0, "defense: scans": 30.0, "defense: purifications": 10.0,
                                   "defense: screening and checks": 4.5})
    assert sum(split.values()) == pytest.approx(70.0)
