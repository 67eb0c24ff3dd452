"""The lone-attacker benchmark's row, from a run record: what was made known and how, the scans, the attacker's apart
z, and who was left out."""

from __future__ import annotations

from benchmarks.lone_attacker import row


def _round(n: int, asr: float, continuous: dict, attackers: list[int]) -> dict:
    return {"round": n, "ba": 0.9, "asr": asr, "attackers": attackers, "continuous": continuous}


def test_a_row_names_the_re_test_the_scan_of_the_most_apart_client_and_the_rounds_left_out() -> None:
    watch = {"z": 1.0, "pair": [0, 1], "tripped": False}
    rounds = [_round(n, 0.01, {"watch": {**watch, "apart": {"z": 3.0 + n / 10, "client": 4}},
                               **({"scan": {"scanned": "cluster", "new": []}} if n in (1, 2, 4, 8) else {})}, [])
              for n in range(1, 11)]
    rounds += [
        _round(11, 0.02, {"watch": {**watch, "apart": {"z": 2.5, "client": 0}}}, [2]),
        _round(12, 0.04, {"watch": {**watch, "apart": {"z": 25.4, "client": 2}},
                          "scan": {"scanned": "most apart client", "new": []}}, [2]),
        _round(13, 0.30, {"retest": {"new": [3]}, "excluded": [2]}, [2]),
        _round(14, 0.01, {"excluded": [2, 5]}, [2]),
    ]
    line = row("probe", {"config": {"continuous-apart-z": 8.0}, "rounds": rounds})
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:4] == ["probe", "8", "3 (13, re-test)", "1, 2, 4, 8, 12*"]
    assert cells[4] == "2.5 (another client), 25.4", "rounds 13-14 have no watch record"
    assert cells[5] == "4.0" and cells[6] == "0.300" and cells[7] == "0.010"
    assert cells[9] == "2/4 / 1", "the attacker left out in 2 of its 4 rounds, one benign client-round"
