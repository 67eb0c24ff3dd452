"""The defense table reads each row from the cached runs of its seeds: mean +/- std over the runs whose config is
the row's (a run made with another config is not reused), a seeds column; a part with no cached run gets no block,
so rendering one part never overwrites another's table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.defense_table import CENTRAL_SEEDS, CENTRALISED, PARTS, build_tables
from fl_defense.config import load_toml, resolve


def _cache(folder: Path, asr: float, ba: float, attackers_excluded: bool | None = None, **settings: Any) -> None:
    """A finished results.json of the default setting with `settings`, 20 rounds, final BA/ASR as given."""
    cfg = resolve({**settings, "out-dir": str(folder)})
    rounds = [{"round": r, "ba": ba, "asr": asr, "seconds": 5.0, "eval_seconds": 1.0, "attackers": [3, 7]}
              for r in range(cfg["rounds"] + 1)]
    if attackers_excluded is not None:
        for row in rounds[1:]:
            row["aggregation"] = {"seconds": 0.5, "excluded": [3, 7] if attackers_excluded else [1]}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"config": cfg, "rounds": rounds,
                                                     "provenance": {"code_version": f"v{settings['seed']}"}}))


def test_rows_are_the_mean_and_std_of_their_seeds_and_a_run_of_another_config_is_not_used(tmp_path: Path) -> None:
    _cache(tmp_path / "badnets-s0", 0.9, 0.90, attack="badnets", seed=0)
    _cache(tmp_path / "badnets-s1", 0.7, 0.92, attack="badnets", seed=1)
    _cache(tmp_path / "badnets-s2", 0.1, 0.50, attack="badnets", seed=2, lr=0.5)  # another config: not this row's
    for seed, excluded in ((0, True), (1, False)):
        _cache(tmp_path / f"badnets-agg-multikrum-s{seed}", 0.01, 0.91, excluded, attack="badnets", seed=seed,
               aggregation="multikrum")
    blocks, curves = build_tables(tmp_path, list(PARTS), set(), {"badnets"}, {}, 3)
    assert sorted(blocks) == ["aggregation", "defenses"], "the parts without a cached run get no block"
    text = "\n".join(blocks.values())
    lines = text.splitlines()
    none = [c.strip() for c in next(line for line in lines if line.startswith("| badnets | none")).split("|")[1:-1]]
    assert none[2:5] == ["0.9100 +/- 0.0141", "0.8000 +/- 0.1414", "2"]
    krum = [c.strip() for c in next(line for line in lines if "| multikrum |" in line).split("|")[1:-1]]
    assert krum[2:6] == ["0.9100 +/- 0.0000", "0.0100 +/- 0.0000", "2", "10.0 +/- 0.0"]
    assert krum[7] == "40/80", "attackers left out in seed 0's 20 rounds, kept in seed 1's"
    assert next(line for line in lines if "| krum |" in line).endswith("| not run | | | | | |")
    assert "| badnets | mcl | not run |" in text, "no purification is cached and none was asked for"
    assert "code version v0, v1 " in blocks["defenses"] and list(curves) == ["badnets, FedAvg, no defense, seed 0"]
    alone, _ = build_tables(tmp_path, ["aggregation"], set(), {"badnets"}, {}, 3)
    assert list(alone) == ["aggregation"] and alone["aggregation"].splitlines()[0].startswith("### Aggregation rules")


def test_no_cached_run_gives_no_block_and_no_curve(tmp_path: Path) -> None:
    blocks, curves = build_tables(tmp_path, list(PARTS), set(), {"badnets"}, {}, 3)
    assert not blocks and not curves


def test_the_paper_model_rows_read_the_mcl_and_cnp_purifications_of_each_seeds_wrn_run(tmp_path: Path) -> None:
    for seed, (before, after) in enumerate(((0.91, 0.90), (0.90, 0.87))):
        folder = tmp_path / f"badnets-wrn16-1-s{seed}"
        _cache(folder, 0.95, before, attack="badnets", seed=seed, model="wrn16-1")
        saved = json.loads((folder / "results.json").read_text())["config"]
        record = {"config": resolve({**{k: v for k, v in saved.items() if k != "out-dir"}, "defense": "mcl"}),
                  "ba_before": before, "asr_before": 0.95, "ba_after": after, "asr_after": 0.01 * (seed + 1),
                  "seconds": 100.0, "flagged": [0]}
        (folder / "purify-mcl").mkdir()
        (folder / "purify-mcl" / "purify.json").write_text(json.dumps(record))
    cnp = json.loads((tmp_path / "badnets-wrn16-1-s0" / "purify-mcl" / "purify.json").read_text())
    cnp.update(config={**cnp["config"], "defense": "cnp"}, asr_after=0.5, cnp_pruned_share=0.02)
    (tmp_path / "badnets-wrn16-1-s0" / "purify-cnp").mkdir()
    (tmp_path / "badnets-wrn16-1-s0" / "purify-cnp" / "purify.json").write_text(json.dumps(cnp))
    _cache(tmp_path / "blended-wrn16-1-s0", 0.95, 0.9, attack="blended", seed=0, model="cnn")  # not the model's run
    blocks, _ = build_tables(tmp_path, ["models"], set(), {"badnets"}, {}, 3)
    text = blocks["models"]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| badnets | wrn16-1 |")}
    mcl, cnp_row = rows[("badnets", "wrn16-1", "mcl")], rows[("badnets", "wrn16-1", "cnp")]
    assert mcl[3:8] == ["0.9050 +/- 0.0071", "0.9500 +/- 0.0000", "0.0150 +/- 0.0071", "0.0200 +/- 0.0141", "2"]
    assert mcl[10] == "[0]; [0]"
    assert cnp_row[5:8] == ["0.5000", "0.0100", "1"] and cnp_row[10] == "[0], pruned 2%"
    assert "| blended | wrn16-1 | mcl | not run |" in text and "| blended | wrn16-1 | cnp | not run |" in text


def test_a_purification_of_a_run_kept_without_its_checkpoint_makes_the_run_again(tmp_path: Path,
                                                                                monkeypatch: Any) -> None:
    """git keeps a run's results.json, not its checkpoint: a purifier asked for later needs the run made again."""
    import benchmarks.defense_table as table

    folder = tmp_path / "badnets-s0"
    _cache(folder, 0.95, 0.9, attack="badnets", seed=0)
    res = json.loads((folder / "results.json").read_text())
    made: list[Path] = []

    def run_experiment(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
        assert cfg["attack"] == "badnets" and cfg["out-dir"] == str(folder)
        made.append(out)
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "final.pt").write_bytes(b"")
        return res

    monkeypatch.setattr(table, "run_experiment", run_experiment)
    monkeypatch.setattr(table, "purify", lambda checkpoint, settings, out: {"checkpoint": checkpoint, **settings})
    assert table.purified(folder, res, "mcl", compute=False) is None and not made
    record = table.purified(folder, res, "mcl", compute=True)
    assert made == [folder] and record == {"checkpoint": str(folder / "checkpoints" / "final.pt"), "defense": "mcl"}
    assert table.purified(folder, res, "mcl", compute=True) is not None and made == [folder], "made once"


def test_the_centralised_rows_pair_each_seed_with_its_no_defense_run_and_purify_its_final_model(
        tmp_path: Path) -> None:
    settings = load_toml(CENTRALISED)
    for seed, (plain, abl) in enumerate(((0.90, 0.89), (0.92, 0.88))):
        _cache(tmp_path / f"central-badnets-none-s{seed}", 1.0, plain, attack="badnets", seed=seed, **settings)
        _cache(tmp_path / f"central-badnets-abl-s{seed}", 0.02, abl, attack="badnets", seed=seed,
               **{**settings, "client-defense": "abl"})
        _cache(tmp_path / f"central-badnets-dbd-s{seed}", 0.03, 0.7, attack="badnets", seed=seed,
               **{**settings, "client-defense": "dbd"})
    _cache(tmp_path / "central-blended-none-s0", 1.0, 0.9, attack="blended", seed=0)  # the federated setting
    folder = tmp_path / "central-badnets-none-s0"
    saved = json.loads((folder / "results.json").read_text())["config"]
    (folder / "purify-mcl").mkdir()
    (folder / "purify-mcl" / "purify.json").write_text(json.dumps({
        "config": resolve({**{k: v for k, v in saved.items() if k != "out-dir"}, "defense": "mcl"}),
        "ba_before": 0.90, "asr_before": 1.0, "ba_after": 0.88, "asr_after": 0.01, "seconds": 40.0, "flagged": [0]}))
    blocks, _ = build_tables(tmp_path, ["centralised"], set(), {"badnets"}, {}, 3)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[1:-1]]
            for line in blocks["centralised"].splitlines() if line.startswith("| b")}
    assert rows[("badnets", "abl")][3:7] == ["0.8850 +/- 0.0071", "0.0200 +/- 0.0000", "2", "0.0250 +/- 0.0212"]
    assert rows[("badnets", "dbd")][5] == str(CENTRAL_SEEDS["dbd"]), "DBD's seeds are capped"
    assert rows[("badnets", "mcl")][3:7] == ["0.8800", "0.0100", "1", "0.0200"] and rows[("badnets", "mcl")][8] == "[0]"
    assert rows[("badnets", "cnp")][3] == "not run"
    assert rows[("blended", "none")][3] == "not run", "a run of the federated setting is not the centralised one's"


def test_a_run_without_a_defense_is_purified_with_today_s_scan_and_stays_valid_when_the_scan_changes(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A run made when the default scan was `nc+warp` did not use the scan's keys: it is still the run of today's
    config, and a purification of its final model asks for today's default scan, not the one in its checkpoint."""
    import benchmarks.defense_table as table

    folder = tmp_path / "blended-s2"
    _cache(folder, 0.95, 0.9, attack="blended", seed=2)
    res = json.loads((folder / "results.json").read_text())
    res["config"].update({"inversion": "nc+warp", "warp-epochs": 9})
    res["config"].pop("blend-alpha")
    (folder / "results.json").write_text(json.dumps(res))
    assert table.federated_run(folder, compute=False, attack="blended", seed=2) is not None
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "final.pt").write_bytes(b"")
    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(table, "purify", lambda checkpoint, settings, out: asked.append(settings) or {
        "config": resolve({**res["config"], **settings})})
    record = table.purified(folder, res, "mcl", compute=True)
    assert asked == [{"defense": "mcl", "inversion": "nc+warp+blend", "warp-epochs": 5, "blend-alpha": 0.1}]
    assert record is not None and record["config"]["inversion"] == "nc+warp+blend"
    purified_with_old_scan = {**record["config"], "inversion": "nc+warp"}
    assert not table.same_config(purified_with_old_scan, record["config"]), "a purification's scan keys are in use"


def test_a_record_older_than_a_changed_default_is_read_at_the_value_it_ran_at() -> None:
    """The scan back-off became the default (max gap 4, with the watch): a continuous run recorded before its keys
    existed scanned every round, so it is not today's default run but is the run of max gap 1; with clients sampled
    the keys cannot act and the record stays the run of today's config; a run without the continuous schedule
    never used them."""
    import benchmarks.defense_table as table

    def old_record(**overrides: Any) -> dict[str, Any]:
        saved = resolve(overrides)
        for key in ("continuous-scan-max-gap", "continuous-watch-z", "continuous-retest"):
            saved.pop(key)
        return saved

    continuous = {"defense": "mcl", "defense-schedule": "continuous"}
    every_round = {**continuous, "continuous-scan-max-gap": 1, "continuous-watch-z": 0.0, "continuous-retest": False}
    assert not table.same_config(old_record(**continuous), resolve(continuous))
    assert table.same_config(old_record(**continuous), resolve(every_round))
    sampled = {**continuous, "num-clients": 100, "clients-per-round": 10}
    assert table.same_config(old_record(**sampled), resolve(sampled))
    assert table.same_config(old_record(), resolve({}))


@pytest.mark.parametrize(("outlying", "cluster", "replied", "valid"), [
    ([2, 7], [2, 7], 10, True),  # the scan singled its cluster out: no suspect, the re-test had nothing to try
    ([2], [2, 4], 10, False),  # a suspect in a round every client took part in: the re-test would have tried it
    ([2], [2, 4], 9, True),  # a client missing: the re-test does not act
])
def test_a_record_from_before_the_retest_counts_as_todays_run_only_where_it_could_not_have_acted(
        tmp_path: Path, outlying: list[int], cluster: list[int], replied: int, valid: bool) -> None:
    """`continuous-retest` became the default; a continuous run recorded before the key existed is today's default run
    when its scans left nothing for the re-test to try, read from its own rounds, and the run of the re-test off in any
    case."""
    import benchmarks.defense_table as table

    continuous = resolve({"defense": "mcl", "defense-schedule": "continuous"})
    saved = {k: v for k, v in continuous.items() if k != "continuous-retest"}
    rounds = [{"round": 1, "continuous": {"partitions": list(range(replied)),
                                          "scan": {"cluster": cluster, "outliers": {"0": outlying}}}}]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": saved, "rounds": rounds}))
    assert (table.cached(path, continuous) is not None) == valid
    assert table.cached(path, {**continuous, "continuous-retest": False}) is not None
