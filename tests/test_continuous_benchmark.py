"""The continuous-training benchmark's tables read runs' records as the README says: from the continuous
defense's first detection at the same seed, with each seed's durability and the defense's share of the seconds."""

from __future__ import annotations

from typing import Any

from benchmarks.continuous import always_table, windows_table


def _run(seed: int, asr: list[float], known_from: int | None = None, defense_seconds: float = 0.0) -> dict[str, Any]:
    """A results.json of rounds 0..len(asr)-1 (attackers in rounds 2-3); the continuous defense's record from
    `known_from` on when given."""
    rounds = []
    for r, a in enumerate(asr):
        row: dict[str, Any] = {"round": r, "asr": a, "ba": 0.8 + r / 100, "seconds": 10.0, "eval_seconds": 1.0,
                               "attackers": [7] if r in (2, 3) else []}
        if known_from is not None and r > 0:
            row["continuous"] = {"defense_seconds": defense_seconds, "labels": [0] if r >= known_from else []}
        rounds.append(row)
    return {"config": {"seed": seed, "target-label": 0}, "rounds": rounds, "provenance": {"code_version": "abc"}}


def test_windows_table_counts_from_each_seeds_detection_and_keeps_each_seeds_durability() -> None:
    results = {"no defense": [_run(0, [0, 0.1, 0.9, 0.95, 0.6, 0.3]), _run(1, [0, 0.1, 0.8, 0.9, 0.05, 0.02])],
               "continuous MCL": [_run(0, [0, 0.1, 0.6, 0.02, 0.01, 0.01], known_from=3, defense_seconds=5.0),
                                  _run(1, [0, 0.1, 0.2, 0.03, 0.04, 0.02], known_from=2, defense_seconds=5.0)]}
    lines = windows_table(results, None, [2, 3], "header").splitlines()
    none = next(line for line in lines if line.startswith("| no defense"))
    cells = [c.strip() for c in none.split("|")[1:-1]]
    # peaks from round 3 (seed 0) and round 2 (seed 1): 0.95 and 0.9
    assert cells[4] == "0.9250 +/- 0.0354" and cells[5] == "0.9250 +/- 0.0354" and cells[6] == "> 2; 1"
    defended = [c.strip() for c in next(line for line in lines if line.startswith("| continuous")).split("|")[1:-1]]
    assert defended[1] == "3, 2" and defended[4] == "0.1100 +/- 0.1273" and defended[6] == "0; 0"
    assert defended[5] == "0.4000 +/- 0.2828", "from round 2, before either detection: 0.6 and 0.2"
    assert defended[8] == "2.00 +/- 0.00", "10 s rounds of which the defense took 5"
    assert "mean +/- std over 2 seeds" in lines[0] and "abc" in lines[-1]


def test_a_variant_of_the_continuous_defense_is_measured_from_its_own_detection() -> None:
    """A later detection of the variant (round 4) must not charge it the ASR of rounds it had not flagged yet, and
    an earlier one (round 2) must count the rounds from there; other methods keep the plain defense's round."""
    results = {"continuous MCL": [_run(0, [0, 0.1, 0.6, 0.02, 0.01, 0.01], known_from=3)],
               "continuous MCL (warm warp scans)": [_run(0, [0, 0.1, 0.7, 0.5, 0.03, 0.01], known_from=4)],
               "no defense": [_run(0, [0, 0.1, 0.9, 0.95, 0.6, 0.3])]}
    lines = windows_table(results, None, [2, 3], "header").splitlines()
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines
             if line.startswith("| ")}
    warm = cells["continuous MCL (warm warp scans)"]
    assert warm[1] == "4" and warm[4] == "0.0300" and warm[5] == "0.7000", "what the later detection let through"
    assert cells["continuous MCL"][4] == "0.0200" and cells["no defense"][4] == "0.9500"


def test_always_table_says_which_methods_have_fewer_seeds() -> None:
    results = {"no defense": [_run(0, [0, 0.5, 1.0]), _run(1, [0, 0.5, 1.0])],
               "continuous MCL": [_run(0, [0, 0.02, 0.01], known_from=1), None]}
    text = always_table(results, "The setting", 2)
    assert "mean +/- std over 2 seeds (fewer for: continuous MCL 1)" in text


def test_always_table_counts_rounds_above_the_bar_for_asr_and_for_its_part_beyond_clean() -> None:
    """A defended run whose ASR is above 0.05 in 3 of its 4 rounds from detection, the trigger's own part in 2;
    a run made before `asr_beyond_clean` was recorded gives '-' there."""
    defended = _run(0, [0, 0.3, 0.06, 0.02, 0.07], known_from=1)
    for row, own in zip(defended["rounds"], [0, 0.3, 0.01, 0.01, 0.06], strict=True):
        row["asr_beyond_clean"] = own
    results = {"continuous MCL": [defended], "no defense": [_run(0, [0, 0.5, 1.0, 1.0, 1.0])]}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in always_table(results, "The setting", 4).splitlines() if line.startswith("| ")}
    assert rows["continuous MCL"][3:5] == ["0.750", "0.500"]
    assert rows["no defense"][3:5] == ["1.000", "-"]
