"""The continuous defense's pieces: trigger shift, outliers, trust, the minority cluster, and the screen itself."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fl_defense.attacks.trigger import Trigger
from fl_defense.config import resolve
from fl_defense.defense import Defender
from fl_defense.errors import ConfigError
from fl_defense.inversion.base import Finding
from fl_defense.screening import (Trust, alike_pair, client_scores, held_by_global, minority_cluster, most_apart,
                                  outliers, partly_singles_out, singles_out, stands_out_again, trigger_shift)
from fl_defense.server.wrappers.continuous import ContinuousDefense

CPU = torch.device("cpu")


def test_outliers_need_both_the_margin_and_three_mads() -> None:
    scores = [0.01, 0.02, 0.03, 0.02, 0.6, 0.01, 0.15]
    assert outliers(scores, margin=0.2) == [4], "0.15 is above 3 MADs but within the margin"
    assert outliers(scores, margin=0.1) == [4, 6]
    wide = [0.0, 0.3, 0.6, 0.9, 0.3, 0.6]
    assert outliers(wide, margin=0.2) == [], "no score stands out of a wide round"


def test_trust_remembers_an_offender_at_half_the_margin() -> None:
    trust = Trust()
    assert trust.screen([0, 1, 2, 3, 4], [0.0, 0.01, 0.9, 0.02, 0.0], margin=0.2) == [2]
    # round 2: partition 2 weakens its update to 0.15 (within the margin), a newcomer 4 does the same
    assert trust.screen([0, 1, 2, 3, 4], [0.0, 0.01, 0.15, 0.02, 0.15], margin=0.2) == [2]
    assert trust.offences == {2: 2}
    restored = Trust()
    restored.load_state_dict(trust.state_dict())
    assert restored.offences == trust.offences


def test_a_trigger_is_the_clusters_only_when_its_outliers_are_in_the_cluster() -> None:
    assert singles_out([7, 3], [3, 7])
    assert singles_out([11, 30, 38, 50], [11, 30, 38]), "one benign client that kept the global model's backdoor"
    assert not singles_out([], [3, 7]), "a trigger that moves nobody"
    assert not singles_out([3, 5], [3, 7]), "a trigger that leaves a client of the cluster alone"
    assert not singles_out([3, 7, 5, 8], [3, 7]), "a trigger that moves as many clients outside the cluster"
    assert not singles_out([65], [65]), "a trigger inverted on one client's model moves that model by construction"


def test_a_trigger_that_moves_part_of_the_cluster_is_only_a_suspect_until_it_moves_the_same_clients_again() -> None:
    assert partly_singles_out([2], [2, 4]), "a lone attacker grouped with a benign client"
    assert not partly_singles_out([2, 4], [2, 4]), "the whole cluster: singled out, not a suspect"
    assert not partly_singles_out([2, 5], [2, 4]), "a client outside the cluster moves too"
    assert not partly_singles_out([2], [2]), "a cluster of one"
    assert not partly_singles_out([], [2, 4])
    assert stands_out_again([2], [2]) and stands_out_again([7], [2, 7])
    assert not stands_out_again([2, 5], [2]), "another client moves as much"
    assert not stands_out_again([], [2]), "nobody moves any more"


def test_a_backdoor_the_global_model_learnt_is_told_from_a_natural_feature(bd, clean_model) -> None:  # noqa: ANN001
    """The global model holds the trigger's backdoor when it answers the trigger far more than a model trained on the
    clean set alone does; a clean global model, or a trigger the reference answers as much, is no backdoor."""
    x, y = clean_model.clean.x, clean_model.clean.y

    def shift(model: torch.nn.Module) -> float:
        return trigger_shift(model, x, y, bd.trigger, bd.target, CPU)

    natural = shift(clean_model.model)
    assert held_by_global(shift(bd.model), natural)
    assert not held_by_global(shift(clean_model.model), natural), "a clean global model"
    assert not held_by_global(shift(bd.model), natural=shift(bd.model)), "the reference answers it as much"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minority_cluster_is_the_pair_that_points_elsewhere(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    benign_direction, attack_direction = torch.randn(200, generator=g), torch.randn(200, generator=g)
    rows = [benign_direction + 0.5 * torch.randn(200, generator=g) for _ in range(8)]
    rows += [attack_direction + 0.5 * torch.randn(200, generator=g) for _ in range(2)]
    order = torch.randperm(10, generator=g)
    updates = torch.stack(rows)[order]
    expected = sorted(int(i) for i in (order >= 8).nonzero().flatten())
    assert minority_cluster(updates, torch.Generator().manual_seed(0)) == expected
    assert minority_cluster(updates[:2], torch.Generator().manual_seed(0)) == [], "too few clients to split"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_watch_finds_two_clients_that_share_a_direction_the_others_lack(seed: int) -> None:
    """Ten updates around one benign direction: the most alike pair stands out only when two of them also share a
    second direction, as attackers planting one backdoor do; fewer than four updates are never judged."""
    g = torch.Generator().manual_seed(seed)
    benign, attack = torch.randn(500, generator=g), torch.randn(500, generator=g)
    rows = torch.stack([0.3 * benign + torch.randn(500, generator=g) for _ in range(10)])
    quiet, _ = alike_pair(rows)
    order = torch.randperm(10, generator=g)
    pair = sorted(int(i) for i in order[:2])
    attacked = rows.clone()
    attacked[pair] += 1.5 * attack
    z, found = alike_pair(attacked)
    assert quiet < 6.0 <= z and sorted(found) == pair
    assert alike_pair(attacked[:3]) == (0.0, (0, 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_most_apart_client_is_the_one_with_an_objective_of_its_own(seed: int) -> None:
    """Ten updates around one benign direction: one that also follows a direction of its own has the lowest mean
    similarity to the others, far below theirs; in a quiet round the most apart client stands much less apart."""
    g = torch.Generator().manual_seed(seed)
    benign, own = torch.randn(500, generator=g), torch.randn(500, generator=g)
    rows = torch.stack([benign + torch.randn(500, generator=g) for _ in range(10)])
    quiet, _ = most_apart(rows)
    lone = int(torch.randint(10, (1,), generator=g))
    attacked = rows.clone()
    attacked[lone] += 2.0 * own
    z, found = most_apart(attacked)
    assert found == lone and z > quiet + 3.0
    assert most_apart(attacked[:3]) == (0.0, 0)


def _poisoned_copy(bd, steps: int) -> torch.nn.Module:  # noqa: ANN001 - fixture object
    """A client's model: the clean model trained `steps` steps on clean images, half of them triggered to the target
    (steps 0: a copy)."""
    model = copy.deepcopy(bd.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(len(bd.clean.x), (64,), generator=g)
        x, y = bd.clean.x[idx].clone(), bd.clean.y[idx].clone()
        x[:32], y[:32] = bd.trigger.apply(x[:32]), bd.target
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_a_poisoned_client_is_screened_out_and_benign_ones_are_kept(clean_model) -> None:  # noqa: ANN001
    """The clean model's copies and one copy trained to answer the trigger: only that one stands out."""
    bd = clean_model
    clients = [_poisoned_copy(bd, 0) for _ in range(4)] + [_poisoned_copy(bd, 60)]
    x, y = bd.clean.x, bd.clean.y
    assert trigger_shift(clients[-1], x, y, bd.trigger, bd.target, CPU) > 0.5
    assert abs(trigger_shift(clients[0], x, y, bd.trigger, bd.target, CPU)) < 0.05
    scores = client_scores(copy.deepcopy(bd.model), [m.state_dict() for m in clients], x, y, {bd.target: bd.trigger},
                           CPU)
    assert Trust().screen([10, 11, 12, 13, 14], scores, margin=0.2) == [14]


def test_trigger_shift_does_not_blame_a_model_that_favours_the_label_anyway(clean_model) -> None:  # noqa: ANN001
    """A model biased toward the label (as a client with skewed data is) without the trigger mattering."""
    biased = copy.deepcopy(clean_model.model)
    biased.head.bias.data[clean_model.target] += 50.0  # every image now goes to the label
    blank = Trigger(torch.zeros(1, 28, 28), torch.zeros(1, 28, 28), 1.0)  # a trigger that changes nothing
    x, y = clean_model.clean.x, clean_model.clean.y
    assert trigger_shift(biased, x, y, blank, clean_model.target, CPU) == 0.0


def test_continuous_needs_a_purifier_that_takes_a_trigger() -> None:
    assert resolve({"defense": "mcl", "defense-schedule": "continuous"})["defense-schedule"] == "continuous"
    with pytest.raises(ConfigError, match=r"defense-schedule.*continuous.*'ft'.*\(cnp, mcl, nc-unlearn\)"):
        resolve({"defense": "ft", "defense-schedule": "continuous"})


# --- through Flower and Ray ---------------------------------------------------------------------------------------

@pytest.mark.simulation
def test_continuous_defense_through_flower_and_ray(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    """5 clients, 2 malicious training 3 local epochs: the round-1 scan of the minority cluster flags the target,
    whose trigger singles out that cluster (the attackers) among the round's clients; from then on they are left
    out of every aggregate, so the deployed model never learns the backdoor."""
    from fl_defense.simulations.runner import run_experiment

    cfg = resolve({"num-clients": 5, "clients-per-round": 5, "train-fraction": 0.05, "rounds": 3,
                   "malicious-fraction": 0.4, "malicious-epochs": 3, "device": "cpu", "defense": "mcl",
                   "defense-schedule": "continuous", "inversion": "nc", "nc-images": 300, "mcl-epochs": 2,
                   "out-dir": str(tmp_path)})
    results = run_experiment(cfg, tmp_path)
    rounds = results["rounds"][1:]
    scan = rounds[0]["continuous"]["scan"]
    assert scan["flagged"][:1] == [cfg["target-label"]] and scan["cluster"] == rounds[0]["malicious_sampled"]
    assert scan["outliers"][str(cfg["target-label"])] == scan["cluster"] and scan["confirmed"] == [0]
    assert rounds[0]["continuous"]["purified"], "the round the target became known purifies what was planted"
    for row in rounds:
        screen = row["continuous"]
        assert screen["labels"] == [cfg["target-label"]] and len(screen["scores"]) == 5
        assert screen["excluded"] == row["malicious_sampled"] == row["attackers"], "the attackers, only they, left out"
        assert screen["filtering"]["recall"] == 1.0 and screen["filtering"]["fpr"] == 0.0
        assert row["asr"] < 0.2 and row["ba"] > 0.5
    assert "scan" not in rounds[1]["continuous"], "no scan once a target is known"
    assert sorted(rounds[1]["continuous"]["watch"]["pair"]) == rounds[1]["malicious_sampled"], "the most alike"
    assert "watch" not in rounds[2]["continuous"], "no watch once the target catches the attackers"
    assert results["filtering"]["continuous"]["rounds"] == 3
    assert results["defense"][0]["scanned"] == "cluster" and results["defense"][0]["flagged"][:1] == [0]


def _continuous(setting, log: list, **overrides: int) -> ContinuousDefense:  # noqa: ANN001 - fixture object
    """The continuous defense's wrapper with `setting`'s trigger known, as after a scan flagged its target."""
    cfg = resolve({"defense": "mcl", "defense-schedule": "continuous", "mcl-epochs": 2, "screen-images": 1000,
                   "device": "cpu", **{key.replace("_", "-"): value for key, value in overrides.items()}})
    defender = Defender(cfg, setting.clean, 10, CPU, lambda m: (setting.ba(m), setting.asr(m)))
    defender.stage.found = {setting.target: (setting.trigger, 1)}
    return ContinuousDefense(None, cfg, defender, copy.deepcopy(setting.model), setting.clean, CPU, log.append)


def test_a_backdoored_aggregate_is_purified_and_a_clean_one_kept(bd, clean_model) -> None:  # noqa: ANN001
    log: list = []
    record: dict = {}
    kept = _continuous(clean_model, log)._check(1, ArrayRecord(clean_model.model.state_dict()),
                                                torch.Generator().manual_seed(0), record)
    assert "purified" not in record and not log and record["aggregate_shift"] < 0.05
    assert all(torch.equal(v, clean_model.model.state_dict()[k]) for k, v in kept.to_torch_state_dict().items())
    record = {}
    purified = _continuous(bd, log)._check(1, ArrayRecord(bd.model.state_dict()), torch.Generator().manual_seed(0),
                                           record)
    assert record["purified"] and record["aggregate_shift"] > 0.5 and len(log) == 1
    model = copy.deepcopy(bd.model)
    model.load_state_dict(purified.to_torch_state_dict())
    assert bd.asr(model) < 0.1 < 0.9 < bd.asr(bd.model) and log[0]["asr_after"] == bd.asr(model)


def test_a_weak_copy_of_the_trigger_is_refreshed_on_the_clients_left_out(bd, clean_model) -> None:  # noqa: ANN001
    """A known trigger that moves the left-out (backdoored) model only partly is inverted again there and replaced by
    one that moves it further; once replaced, the label is not tried again."""
    corner = torch.zeros_like(bd.trigger.mask)
    rows, cols = bd.trigger.mask[0].nonzero(as_tuple=True)
    corner[0, rows.min(), cols.min()] = 1.0  # one pixel of the 4x4 patch
    weak = Trigger(bd.trigger.pattern, corner)
    x, y = bd.clean.x, bd.clean.y
    before = trigger_shift(bd.model, x, y, weak, bd.target, CPU)
    assert before < 0.5, "precondition: the known trigger is a weak copy"
    defense = _continuous(bd, [])
    defense.defender.stage.found = {bd.target: (weak, 1)}
    record = defense._refresh([bd.target], [bd.model.state_dict()], [1.0], torch.Generator().manual_seed(0))
    entry = record[str(bd.target)]
    refreshed = defense.defender.known()[bd.target]
    assert entry["kept"] and entry["shift"] == round(before, 4) and entry["new_shift"] > 0.9
    assert refreshed is not weak and trigger_shift(bd.model, x, y, refreshed, bd.target, CPU) > 0.9
    record: dict = {}
    states = [bd.model.state_dict()] + [clean_model.model.state_dict()] * 6
    defense._screen(2, list(range(7)), states, list(range(7)), torch.Generator(), record)
    assert record["excluded"] == [0] and "refresh" not in record, "tried no more once a new trigger was kept"
    restored = _continuous(bd, [])
    restored.load_state_dict(defense.state_dict())
    assert restored._refreshes == {bd.target: 3}


def test_a_refreshed_trigger_that_moves_the_clean_references_is_not_kept(bd, monkeypatch) -> None:  # noqa: ANN001
    """The refresh finds a trigger that moves the left-out model further, but it also moves the clean reference
    models beyond `nc-transfer-max` (a natural feature): the known trigger stays and the label may be tried again."""
    corner = torch.zeros_like(bd.trigger.mask)
    rows, cols = bd.trigger.mask[0].nonzero(as_tuple=True)
    corner[0, rows.min(), cols.min()] = 1.0
    weak = Trigger(bd.trigger.pattern, corner)
    defense = _continuous(bd, [])
    defense.defender.stage.found = {bd.target: (weak, 1)}
    monkeypatch.setattr(defense, "_natural_shift", lambda triggers=None: 0.0 if triggers[bd.target] is weak else 0.3)
    entry = defense._refresh([bd.target], [bd.model.state_dict()], [1.0], torch.Generator().manual_seed(0))[
        str(bd.target)]
    assert entry["new_shift"] - 0.3 > entry["shift"], "precondition: the new trigger moves the model further"
    assert not entry["kept"] and defense.defender.known()[bd.target] is weak
    assert defense._refreshes == {bd.target: 1}


def test_the_scans_go_on_until_a_known_label_catches_a_client_in_a_later_round(bd, clean_model) -> None:  # noqa: ANN001
    """A label is catching once its trigger leaves a client out after the round that made it known (a label flagged
    in error on benign skewed clients leaves nobody out later); until one is, the scans go on."""
    defense = _continuous(bd, [])
    defense.cfg = {**defense.cfg, "continuous-refreshes": 0}
    defense._known_at = {bd.target: 4}
    states = [bd.model.state_dict()] + [clean_model.model.state_dict()] * 6
    replies = [f"reply {p}" for p in range(7)]
    for server_round, catching in ((4, set()), (5, {bd.target})):
        record: dict = {}
        kept = defense._screen(server_round, replies, states, list(range(7)), torch.Generator(), record)
        assert record["excluded"] == [0] and kept == replies[1:]
        assert defense._catching == catching
    restored = _continuous(bd, [])
    restored.load_state_dict(defense.state_dict())
    assert restored._catching == {bd.target} and restored._known_at == {bd.target: 4}
    older = _continuous(bd, [])
    older.load_state_dict({"trust": Trust().state_dict()})
    assert older._catching == {bd.target}, "a checkpoint from before: its scans had stopped at the first flag"


def test_a_label_flagged_in_three_scans_in_a_row_is_taken_when_the_global_model_answers_half_the_level(
        bd, monkeypatch) -> None:  # noqa: ANN001
    """The global model holds the backdoor (every client answers, no cluster stands out) but the scans' trigger is a
    weak copy that moves it 0.25-0.35, under the 0.4 of `held_by_global`: the label is taken at the third scan in a
    row that flags it, not before, and a scan that does not flag it starts the count again."""
    x, y = bd.clean.x, bd.clean.y
    weak = next(t for a in torch.arange(0.2, 0.6, 0.01).tolist() if 0.25 <= trigger_shift(
        bd.model, x, y, t := Trigger(bd.trigger.pattern, bd.trigger.mask, a), bd.target, CPU) <= 0.35)
    defense = _continuous(bd, [])
    defense.defender.stage.found = {}
    defense._sent = bd.model.state_dict()
    flags = iter([[bd.target], [bd.target], [], [bd.target], [bd.target], [bd.target]])
    monkeypatch.setattr(defense.defender, "scan", lambda model, generator: Finding(
        (flagged := next(flags)), {label: weak for label in flagged}))
    states = [bd.model.state_dict()] * 5
    news = [defense._scan(r, states, [1.0] * 5, list(range(5)), torch.Generator().manual_seed(r))["new"]
            for r in range(1, 7)]
    assert news == [[], [], [], [], [], [bd.target]]
    assert defense.defender.known() == {bd.target: weak}


@pytest.mark.parametrize(("flags", "every", "cap", "sampled", "scans"), [
    ({1}, 1, 4, set(), [1, 2, 4, 8, 12, 16, 20]),  # quiet after round 1: the gap doubles to the cap
    ({1, 8}, 1, 4, set(), [1, 2, 4, 8, 9, 11, 15, 19]),  # a flag returns it to every round
    (set(), 2, 8, set(), [1, 5, 13]),  # the first quiet scan doubles continuous-scan-every
    (set(), 3, 1, set(), [1, 4, 7, 10, 13, 16, 19]),  # a cap under continuous-scan-every: no back-off
    ({1}, 1, 4, {4}, [1, 2, 4, 5, 7, 11, 15, 19]),  # round 4 had a sample of the clients: back to every round
    (set(), 1, 4, set(range(1, 21)), list(range(1, 21))),  # clients sampled in every round: no back-off
    ({1, -6}, 1, 4, set(), [1, 2, 4, 6, 7, 9, 13, 17]),  # the watch calls round 6's scan and resets the gap
    ({1, -8}, 1, 4, set(), [1, 2, 4, 8, 9, 11, 15, 19]),  # a watch in a round due anyway resets the gap too
    ({-6}, 1, 1, set(), list(range(1, 21))),  # no back-off: the watch adds nothing
])
def test_scans_back_off_while_they_flag_nothing_and_resume_at_a_flag(
        bd, flags: set[int], every: int, cap: int, sampled: set[int], scans: list[int]) -> None:  # noqa: ANN001
    """The rounds that scan, from each scan's flags (-r: the watch tripped in round r, the scan flagged nothing) and
    whether every client took part (`_back_off`), and the same schedule after a restore from a checkpoint taken
    halfway."""
    def schedule(defense: ContinuousDefense, rounds: range) -> list[int]:
        done = []
        for r in rounds:
            if defense._scan_due(r, tripped=-r in flags):
                defense._back_off(r, {"flagged": [0] if r in flags else []}, everyone=r not in sampled,
                                  tripped=-r in flags)
                done.append(r)
        return done

    keys = {"continuous_scan_every": every, "continuous_scan_max_gap": cap}
    assert schedule(_continuous(bd, [], **keys), range(1, 21)) == scans
    half = _continuous(bd, [], **keys)
    early = schedule(half, range(1, 11))
    restored = _continuous(bd, [], **keys)
    restored.load_state_dict(half.state_dict())
    assert early + schedule(restored, range(11, 21)) == scans


def test_the_watch_calls_no_scan_the_rules_forbid(bd) -> None:  # noqa: ANN001
    """A tripped watch scans a round the back-off skipped, but not the round after a label became known (it gets a
    round to catch) and not once a known label is catching."""
    defense = _continuous(bd, [], continuous_scan_max_gap=4)
    defense._next_scan = 9
    assert not defense._scan_due(6) and defense._scan_due(6, tripped=True)
    defense._known_at = {bd.target: 5}
    assert not defense._scan_due(6, tripped=True)
    defense._catching = {bd.target}
    assert not defense._scan_due(8, tripped=True)


@pytest.mark.parametrize(("attacker_next_round", "retest", "clients", "known"), [
    (0, True, 7, True),  # the same client stands out again: the label is made known in round 2
    (None, True, 7, False),  # the attacker is gone: nobody stands out, the suspect is dropped
    (3, True, 7, False),  # another client stands out: not the one the trigger moved before
    (0, False, 7, False),  # continuous-retest=false: no suspect
    (0, True, 100, False),  # clients sampled (7 of 100): no suspect
])
def test_a_lone_attacker_flagged_on_part_of_its_cluster_is_made_known_when_it_stands_out_again(
        bd, clean_model, monkeypatch, attacker_next_round: int | None, retest: bool, clients: int,
        known: bool) -> None:  # noqa: ANN001
    """Round 1's scan flags the target on the cluster [attacker, benign client]; its trigger moves the attacker and
    not the benign one, so the label is a suspect; round 2 scores its clients with that trigger (a restore from a
    checkpoint in between) and makes it known only if the attacker, and nobody else, stands out again."""
    monkeypatch.setattr("fl_defense.server.wrappers.continuous.minority_cluster", lambda updates, generator: [0, 1])
    defense = _continuous(bd, [], continuous_retest=retest, num_clients=clients, clients_per_round=7)
    defense.defender.stage.found = {}
    defense._sent = clean_model.model.state_dict()
    monkeypatch.setattr(defense.defender, "scan", lambda model, generator: Finding([bd.target],
                                                                                   {bd.target: bd.trigger}))
    states = [bd.model.state_dict()] + [clean_model.model.state_dict()] * 6
    scan = defense._scan(1, states, [1.0] * 7, list(range(7)), torch.Generator().manual_seed(1))
    assert scan["outliers"][str(bd.target)] == [0] and scan["new"] == []
    assert scan["suspects"] == ([bd.target] if retest and clients == 7 else [])
    restored = _continuous(bd, [], continuous_retest=retest, num_clients=clients, clients_per_round=7,
                           continuous_refreshes=0)
    restored.defender.stage.found = {}
    restored.load_state_dict(defense.state_dict())
    monkeypatch.setattr(restored.defender, "scan", defense.defender.scan)
    later = [clean_model.model.state_dict()] * 7
    if attacker_next_round is not None:
        later[attacker_next_round] = bd.model.state_dict()
    record: dict = {}
    restored._sent = clean_model.model.state_dict()
    replies = [f"reply {p}" for p in range(7)]
    if restored._suspects:
        record["retest"] = restored._retest(2, later, list(range(7)))
    assert (bd.target in restored.defender.known()) == known and not restored._suspects
    assert restored._scan_due(2) != known, "no scan in the round a re-test made a label known"
    if known:
        assert record["retest"]["new"] == [bd.target] and record["retest"][str(bd.target)]["outliers"] == [0]
        assert restored._screen(2, replies, later, list(range(7)), torch.Generator(), {}) == replies[1:]


@pytest.mark.parametrize(("z", "level", "clients", "moved", "suspect"), [
    (11.0, 8.0, 7, [3], True),  # apart enough, every client replied, the trigger moves that client alone: a suspect
    (11.0, 8.0, 7, [3, 5], False),  # its trigger moves another client too: not that client's alone
    (5.0, 8.0, 7, [3], None),  # not apart enough: no scan
    (11.0, 0.0, 7, [3], None),  # continuous-apart-z=0 (off): no scan
    (11.0, 8.0, 100, [3], None),  # clients sampled (7 of 100): no scan
])
def test_a_round_no_scan_is_due_for_scans_the_most_apart_client_alone(
        bd, clean_model, monkeypatch, z: float, level: float, clients: int, moved: list[int],
        suspect: bool | None) -> None:  # noqa: ANN001
    """A round the back-off skips and the watch does not call scans the model of the client the watch found most
    apart, alone, when it stands `continuous-apart-z` apart and every client replied; the scan leaves the back-off's
    next round as it was, and its flag is a suspect only when its trigger moves that client and nobody else."""
    defense = _continuous(bd, [], continuous_apart_z=level, num_clients=clients, clients_per_round=7)
    defense.defender.stage.found = {}
    defense._sent = clean_model.model.state_dict()
    defense._next_scan = 9
    scanned: list = []
    monkeypatch.setattr(defense.defender, "scan", lambda model, generator: scanned.append(
        copy.deepcopy(model.state_dict())) or Finding([bd.target], {bd.target: bd.trigger}))
    states = [bd.model.state_dict() if i in moved else clean_model.model.state_dict() for i in range(7)]
    record = {"watch": {"z": 1.0, "pair": [0, 1], "tripped": False, "apart": {"z": z, "client": 3}}}
    assert not defense._scan_due(6) and defense._apart(6, record, list(range(7))) == (suspect is not None)
    if suspect is None:
        return
    replies = [SimpleNamespace(content=RecordDict({"metrics": MetricRecord({"num-examples": 100})})) for _ in range(7)]
    kept = defense._scans(6, replies, replies, states, list(range(7)), torch.Generator(), record, False, False)
    assert kept == replies
    assert record["scan"]["cluster"] == [3] and record["scan"]["scanned"] == "most apart client"
    assert all(torch.equal(v, bd.model.state_dict()[k]) for k, v in scanned[0].items()), "the apart client's model"
    assert record["scan"]["outliers"][str(bd.target)] == moved
    assert record["scan"]["suspects"] == ([bd.target] if suspect else []) and not defense.defender.known()
    assert defense._next_scan == 9, "the back-off's schedule is left as it was"
