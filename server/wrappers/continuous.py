"""The continuous defense (`defense-schedule=continuous`): the server defends in every round's aggregation.

Purifying every k rounds leaves a saw: the attackers re-plant the backdoor within a few rounds of each
purification (benchmarks/README.md). Here, in every round:
1. until a known label is catching (every `continuous-scan-every` rounds; catching: its trigger left a client out in
   a round after the one that made it known, so a label flagged in error on benign clients, which leaves nobody out
   later, does not end the scans; measured on the hard setting, seed 0, at f19461e: NC flagged Sandal on the round-1
   cluster of two benign clients, its trigger singled them out, the scans stopped there, and the screen left nobody
   out in 57 of the next 59 rounds while the backdoor reached ASR 1.0; a label a scan makes known joins those known
   before; no scan in the round after a label became known: a backdoor the global model held answers in every client
   until the purified model has been trained on once, and in seed 2 at bf5ed34 the scan in that round took Coat, a
   skewed cluster's feature, which then left out 21 benign clients; a scan that flags no label in a round every
   client of the federation took part in doubles the rounds to the next one, up to `continuous-scan-max-gap`, and any
   other scan returns them to `continuous-scan-every` (`_back_off`): a scan costs five rounds and more, and where no
   attack is there it flags nothing, round after round; measured at 8dbc52a on the 100-round run with attack windows,
   seed 0, the scans of rounds 2-10 flagged nothing, 9 of its 12 scans up to the detection, 239 of the 343 defense
   seconds up to it in a run that cost 1.74 times its rounds; with the back-off it scanned in rounds 1, 2, 4, 8 and
   12, detected in round 12 as before, every round's BA and ASR the same, and cost 1.41 times. With clients sampled,
   an empty scan says nothing of the next round's clients: on the hard setting (10 of 100 clients a round) a back-off
   without that condition, at 7077950-b5af983, left seeds 0-2 and 4 as they were (the rounds it skipped flagged
   nothing that counted) but at seed 3 skipped round 4, where the target had been flagged, scanned round 5 (no
   attacker sampled: nothing) and round 9 (the backdoor planted, ASR 0.9997, and the scan flagged nothing), took Coat
   in round 13, never the target, and deployed ASR above 0.05 in all 57 rounds from round 4 on, at 0.99-1.0 in most
   of them. Alone, the back-off scans an attack that begins in a quiet stretch up to `continuous-scan-max-gap` - 1
   rounds late: at 4, the windows run's seed 2 scanned round 11 (nothing flagged), then 15, and deployed ASR 0.055,
   0.228 and 0.480 in rounds 12-14, where scanning every round had flagged the target in round 12. Hence the watch
   (`_watch`, `fl_defense.screening.alike_pair`): a round the back-off would skip is scanned anyway when its two most
   alike client updates stand `continuous-watch-z` robust standard deviations above the round's pairs, and such a
   round does not lengthen the gap. Attackers planting one backdoor share an objective that benign clients lack;
   measured on that run's first 16 rounds at seeds 0-2 (no defense, a probe): the 30 quiet rounds reached at most
   3.8 (the most alike pair was benign), the first attacked round 17.3, 24.8 and 14.9, the next five 3.5-12.0, each
   time the two attackers; 6 stands above the quiet rounds' largest with room and was set on them alone. The watch
   sees colluding clients, not a lone attacker, whom the back-off alone still reaches within its gap
   (benchmarks/README.md); with `continuous-apart-z` (off by default) a round no scan is due for scans the model of
   the client whose update stands most apart from the others, alone (`_apart`), and a flag whose trigger moves that
   client alone is re-tested like a partial one): the run's trigger source scans the model of the round's minority
   cluster of updates (`fl_defense.screening.minority_cluster`), where an attack that is still diluted in the global
   model is at full strength. A flagged label becomes the target only if its trigger singles out that cluster:
   scoring the round's clients with it, every client of the cluster is an outlier, and fewer clients outside the
   cluster are than inside (`fl_defense.screening.singles_out`). A backdoor's trigger moves the models that learnt
   it; a scan of a model of a few clients with skewed data flags what moves such models, which moves some of them and
   other skewed clients as much. Measured on the hard setting, seed 0 (the rule was set there; seeds 1-4 were run
   after): the round-1 cluster was two benign clients and the warp scan flagged Shirt, Sandal and Bag, whose triggers
   moved one or two clients outside the cluster as much; taken as the target (the first version, no check), screening
   for Shirt left out benign clients for 60 rounds while the backdoor reached ASR 1.0. Round 2's cluster was three
   attackers and a benign client, the warp scan flagged Coat, and its outliers were that benign client and two of the
   attackers (scores 0.39, 0.50, 0.36; the third attacker 0.16): a check that asked only for outliers inside the cluster
   took it, and a second flag of the same label (a confirmation count) took it at round 4. In round 4 the cluster was
   the three attackers, NC flagged the target, and its outliers were them and one benign client (a rule asking for the
   cluster exactly missed it). A cluster of one client is never singled out (seed 3, round 1: NC flagged three labels on
   one benign client's model, whose trigger for Shirt moved that client alone, and Shirt was taken; a lone attacker is
   found with another or once the global model holds its backdoor). A flag is also the target when the global model
   holds its trigger (`fl_defense.screening.held_by_global`): once the global model learnt the backdoor every client
   answers it and no cluster stands out. Measured on the hard setting, seed 2: the backdoor was planted by round 8
   (global ASR 0.82) while no scan had flagged the target yet, then NC flagged it in rounds 9, 10, 13 and 14 with no
   outlier; the first version of this test asked the round's median client for 0.5 of the clean images beyond the
   reference and got 0.46, 0.21, 0.50 (refused) and 0.53 (round 14). The global model the round started from answered it
   0.53, 0.40, 0.51 and 0.54 beyond the reference, and every false flag of seeds 0-2 up to each seed's detection (17,
   all but one from the warp scan) at most 0.23 (Coat in seed 2's round 13, on a global model of ASR 0.99; Dress 0.21 in
   seed 1's round 5, ASR 0.53), 15 of them at most 0.10; the level, 0.4, lies between (set on these scans; seeds 3 and 4
   were run after). Also when scans in `STREAK` rounds in a row flag it with the global model answering half that level
   (`fl_defense.screening.held_by_global_streak`). And, with `continuous-retest` in a round every client took part in,
   when its trigger moved some of the cluster's clients and nobody else without singling the cluster out
   (`partly_singles_out`) and, in the next round, moves some of those clients and nobody else again (`_retest`,
   `stands_out_again`): a lone attacker grouped with a benign client. Measured with 1 of the default setting's 10
   clients attacking in rounds 11-20 (a probe, seed 0, at d1022eb): round 12's scan flagged the target on the cluster
   [attacker, benign client], its trigger moved the attacker 0.47 (the round's median client 0.09) and not its partner,
   the cluster rule refused it, and deployed ASR reached 0.447 by round 20; with the re-test (record:
   benchmarks/runs/probes/lone-attacker-retest-s0) round 13 scored the attacker 0.47 again, nobody else beyond the
   margin, took the target, purified and left the attacker out from then on, deployed ASR at most 0.026 (at two other
   seeds no scan flagged the target on a cluster holding the attacker, and nothing was re-tested). With clients sampled
   the next round's clients are others, and the hard setting's partial flags were mostly not the target
   (`partly_singles_out`): no re-test there;
2. once a trigger is known: every client's model is scored by how far the trigger moves the clean set toward
   its label, and the outliers, and clients left out before that score above half the margin, are left out
   of the aggregate (`fl_defense.screening`). In a round that left clients out, the trigger of the label that
   left them out is inverted again on their model (`_refresh`), where the backdoor is at full strength, until a
   new one moves that model further beyond the clean references: a trigger flagged on a half-planted backdoor is
   a weak copy. Measured on the hard setting, seed 3 (before, then with it): the NC trigger flagged in round 4
   moved the three left-out attackers' model 0.53, the one inverted again there 0.79; the attackers' mean scores
   rose from 0.20-0.40 to 0.20-0.91 (benign clients at most 0.14 and 0.08), the screen's recall from 0.91 to
   0.94, and the rounds with deployed ASR above 0.05 fell from 26 of 57 to 9 of 57 (highest 0.132 to 0.063).
   Over the 5 seeds of benchmarks/README.md: 0.24-0.53 before, 0.70-0.99 after, replaced at every seed; a first
   version that tried again in every such round changed the trigger's shift by at most 0.025 after the first;
3. the aggregate is purified with the known triggers (the run's purifier, MCL first) in the round the target
   became known, against the backdoor planted before it: the inverted trigger measures a partly planted
   backdoor poorly (hard setting, seed 0, round 4: it moved 0.10 of the aggregate's clean images against
   0.078 on the clean reference, while the aggregate's ASR with the attackers' trigger was 0.20, and
   0.12-0.17 in the next two rounds although every attacker was left out). Later, when the trigger moves
   more than `continuous-purify-above` more of the clean images to its label than it moves on the clean
   reference model (what a natural feature does; measured on the default setting, the aggregate's shift
   with the attackers left out stayed at 0.02-0.047, the noise a bare 0.05 bound would have purified):
   anything that got past the screen.
The purified aggregate is what the clients train next and what the server deploys. Reports, under
`continuous`, the round's scores, who was left out (scored against the ground truth as every filtering rule
is), the scan and the purification.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fl_defense.aggregation import average_states
from fl_defense.attacks.trigger import Stamp, stamp_from_state
from fl_defense.defense import Defender
from fl_defense.inversion.nc import invert_label
from fl_defense.inversion.reference import mean_rate
from fl_defense.models import BackdoorModel
from fl_defense.protocol import SHADOW_ARRAYS
from fl_defense.purification.base import CleanSet
from fl_defense.screening import (PLANTED, Trust, alike_pair, client_scores, client_shifts, held_by_global,
                                  held_by_global_streak, largest_shift, minority_cluster, most_apart, outliers,
                                  partly_singles_out, singles_out, stands_out_again, trigger_shift)
from fl_defense.server.aggregation.base import partition_id, reply_weight
from fl_defense.server.strategy import StrategyWrapper

DefenseLog = Callable[[dict[str, Any]], None]


def reply_state(msg: Message) -> dict[str, torch.Tensor]:
    """The client's model in a train reply (its one model record, the shadow's aside)."""
    record = next(r for k, r in msg.content.array_records.items() if k != SHADOW_ARRAYS)
    return record.to_torch_state_dict()


def flat_update(state: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A client's update of the floating-point entries, as one vector."""
    return torch.cat([(state[k].float() - sent[k].float()).flatten() for k in sent if sent[k].is_floating_point()])


def _pairs(counts: Mapping[int, int]) -> list[list[int]]:
    return [[k, v] for k, v in counts.items()]


def _unpairs(pairs: Iterable[Iterable[int]]) -> dict[int, int]:
    return {int(k): int(v) for k, v in pairs}


class ContinuousDefense(StrategyWrapper):
    """Scan, screen and purify in every round around `inner` (see the module docstring)."""

    report_key = "continuous"

    def __init__(self, inner: Any, cfg: Mapping[str, Any], defender: Defender, model: BackdoorModel,
                 clean: CleanSet, device: torch.device, log: DefenseLog) -> None:
        super().__init__(inner)
        self.cfg, self.defender, self.model, self.device, self.log = cfg, defender, model, device, log
        order = torch.randperm(len(clean.x), generator=torch.Generator().manual_seed(cfg["seed"]))
        pick = order[:cfg["screen-images"]]
        self.screen_set = CleanSet(clean.x[pick], clean.y[pick])
        self.trust = Trust()
        self._refreshes: dict[int, int] = {}  # label -> rounds its trigger was inverted again (`_refresh`)
        self._known_at: dict[int, int] = {}  # label -> the round a scan made it known
        self._catching: set[int] = set()  # known labels whose trigger left a client out after that round
        self._streaks: dict[int, int] = {}  # label -> scans in a row that flagged it with the global model answering
        self._suspects: dict[int, tuple[Stamp, list[int]]] = {}  # label -> trigger, clients it moved (`_retest`)
        self._sent: dict[str, torch.Tensor] = {}
        self._known_natural: float | None = None  # `_natural_shift` of the known triggers, until one is remembered
        self._gap = cfg["continuous-scan-every"]  # rounds from the last scan to the next (`_back_off`)
        self._next_scan = 1

    def state_dict(self) -> dict[str, Any]:
        return {"trust": self.trust.state_dict(), "refreshes": _pairs(self._refreshes),
                "known_at": _pairs(self._known_at), "catching": sorted(self._catching),
                "streaks": _pairs(self._streaks), "scan_gap": self._gap, "next_scan": self._next_scan,
                "suspects": [{"label": label, "stamp": stamp.state_dict(),  # type: ignore[attr-defined]
                              "partitions": parts} for label, (stamp, parts) in self._suspects.items()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`; a checkpoint of an older version, without the later keys, counts every known label
        as catching (its scans had stopped at the first flag)."""
        self.trust.load_state_dict(state["trust"])
        self._refreshes = _unpairs(state.get("refreshes", []))
        self._known_at = _unpairs(state.get("known_at", []))
        self._catching = {int(v) for v in state.get("catching", self.defender.known())}
        self._streaks = _unpairs(state.get("streaks", []))
        self._gap = int(state.get("scan_gap", self.cfg["continuous-scan-every"]))
        self._next_scan = int(state.get("next_scan", 1))
        self._suspects = {int(e["label"]): (stamp_from_state(e["stamp"]), [int(p) for p in e["partitions"]])
                          for e in state.get("suspects", [])}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent = arrays.to_torch_state_dict()
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        replies = [m for m in replies if not m.has_error()]
        partitions = [partition_id(m) for m in replies]
        generator = torch.Generator().manual_seed(self.cfg["seed"] * 1_000_003 + server_round)
        record: dict[str, Any] = {"partitions": partitions}
        watching = not self._catching and (self.cfg["continuous-watch-z"] > 0 or self.cfg["continuous-apart-z"] > 0)
        states = ([reply_state(m) for m in replies]
                  if replies and (watching or self._scan_due(server_round) or self.defender.known() or self._suspects)
                  else [])
        if watching and states:
            record["watch"] = self._watch(states, partitions)
        tripped = bool(record.get("watch", {}).get("tripped"))
        kept = self._screen(server_round, replies, states, partitions, generator, record) if states else replies
        if self._catching:  # the scans have stopped: nothing more to make known
            self._suspects = {}
        if self._suspects and states:
            record["retest"] = self._retest(server_round, states, partitions)
            if record["retest"]["new"]:
                kept = self._screen(server_round, replies, states, partitions, generator, record)
        due = self._scan_due(server_round, tripped)
        if states and (due or self._apart(server_round, record, partitions)):
            kept = self._scans(server_round, replies, kept, states, partitions, generator, record, due, tripped)
        replies = kept
        record["screen_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        arrays, metrics = self.inner.aggregate_train(server_round, replies) if replies else (None, None)
        t2 = time.perf_counter()
        if arrays is not None and self.defender.known():
            arrays = self._check(server_round, arrays, generator, record)
        record["defense_seconds"] = t1 - t0 + time.perf_counter() - t2  # all but the aggregation rule's
        self.last_info = record
        return arrays, metrics

    def _screen(self, server_round: int, replies: list[Message], states: list[dict[str, torch.Tensor]],
                partitions: list[int], generator: torch.Generator, record: dict[str, Any]) -> list[Message]:
        """Leave out the clients whose models the known triggers move far more than the round's other clients'
        (`Trust`), and refresh the triggers on the model of those left out; a label whose trigger leaves a client out
        in a round after the one it became known in is catching (the scans stop). The replies kept (all of them while
        no label is known)."""
        known = self.defender.known()
        if not known:
            return replies
        shifts = client_shifts(self.model, states, self.screen_set.x, self.screen_set.y, known, self.device)
        scores = [max(s.values()) for s in shifts]
        excluded = self.trust.screen(partitions, scores, self.cfg["screen-margin"])
        record.update(labels=list(known), scores=[round(s, 4) for s in scores], excluded=excluded)
        left_out = [i for i, p in enumerate(partitions) if p in excluded]
        catching = {max(shifts[i], key=shifts[i].__getitem__) for i in left_out}  # the label that left each out
        self._catching |= {label for label in catching if server_round > self._known_at.get(label, 0)}
        due = [label for label in catching if self._refreshes.get(label, 0) < self.cfg["continuous-refreshes"]]
        if due:
            record["refresh"] = self._refresh(due, [states[i] for i in left_out],
                                              [reply_weight(replies[i].content) for i in left_out], generator)
        return [m for m, p in zip(replies, partitions, strict=True) if p not in excluded]

    def _scans(self, server_round: int, replies: list[Message], kept: list[Message],
               states: list[dict[str, torch.Tensor]], partitions: list[int], generator: torch.Generator,
               record: dict[str, Any], due: bool, tripped: bool) -> list[Message]:
        """The round's scan: of the minority cluster when one is `due` (then the back-off sets the next), else of the
        client the watch found most apart (`_apart`), which leaves the back-off as it was. The replies to keep:
        `kept`, or those the screen keeps with the labels the scan made known."""
        lone = None if due else partitions.index(record["watch"]["apart"]["client"])
        record["scan"] = self._scan(server_round, states, [reply_weight(m.content) for m in replies], partitions,
                                    generator, lone)
        if due:
            self._back_off(server_round, record["scan"], everyone=self._everyone(partitions), tripped=tripped)
        if not record["scan"]["new"]:
            return kept
        return self._screen(server_round, replies, states, partitions, generator, record)

    def _apart(self, server_round: int, record: dict[str, Any], partitions: list[int]) -> bool:
        """Whether this round scans the model of the client whose update stands most apart from the others
        (`continuous-apart-z`, `fl_defense.screening.most_apart`): only in a round every client took part in, when
        the scans have not stopped. A lone attacker has no partner for the watch, and in a minority cluster of three
        to five clients its backdoor is diluted (benchmarks/README.md: the lone-attacker probes, where the scans of
        such clusters flagged nothing). Measured on those probes (the default setting, 1 of 10 clients attacking
        from round 11, seeds 0-2 and Dirichlet(0.5) seed 0, at ad4b37c, records benchmarks/runs/probes/lone-apart-*):
        the attacker was the most apart client in 15 of its 16 rounds 11-14 (not in the Dirichlet run's round 11), z
        2.4-7.2 in its first round at the IID seeds and 11.0-49.4 in its second at every seed, while the 40 quiet
        rounds before reached 5.4 (IID 5.1, Dirichlet 5.4); 8 was set on those quiet rounds (the watch's room over
        its quiet rounds, 6 over 3.8), and two runs with no attacker made with it reached 7.84 (Dirichlet(0.5), round
        14) and 8.39 (IID, round 21 of 40: one scan of a benign client, nothing flagged; records
        benchmarks/runs/probes/*-apart8-s0): little room, hence off by default (benchmarks/README.md)."""
        watch, level = record.get("watch"), self.cfg["continuous-apart-z"]
        return (bool(watch) and level > 0 and watch["apart"]["z"] >= level and self._everyone(partitions)
                and self._scan_due(server_round, tripped=True))

    def _scan(self, server_round: int, states: list[dict[str, torch.Tensor]], weights: list[float],
              partitions: list[int], generator: torch.Generator, lone: int | None = None) -> dict[str, Any]:
        """Scan the model of the round's minority cluster (all clients when there is none), or of the client `lone`
        alone, and make known each flagged label whose trigger singles out the cluster; a flag whose trigger moves
        part of the cluster (`partly_singles_out`), or the client `lone` alone, and nobody else, is a suspect for
        `_retest`. The scan's record."""
        updates = torch.stack([flat_update(s, self._sent) for s in states])
        cluster = [lone] if lone is not None else minority_cluster(updates, generator) or list(range(len(states)))
        self.model.load_state_dict(average_states([states[i] for i in cluster], [weights[i] for i in cluster]))
        finding = self.defender.scan(self.model, generator)
        outlying: dict[str, list[int]] = {}
        candidate_scores: dict[str, list[float]] = {}
        evidence: dict[str, dict[str, float]] = {}
        streaks: dict[int, int] = {}
        for label in finding.flagged:
            if label not in finding.triggers:
                continue
            trigger = {label: finding.triggers[label]}
            scores = client_scores(self.model, states, self.screen_set.x, self.screen_set.y, trigger, self.device)
            found = outliers(scores, self.cfg["screen-margin"])
            self.model.load_state_dict(self._sent)
            shift, natural = self._shift(self.model, trigger), self._natural_shift(trigger)
            evidence[str(label)] = {"global_shift": round(shift, 4), "reference_shift": round(natural, 4)}
            candidate_scores[str(label)] = [round(v, 4) for v in scores]
            outlying[str(label)] = [partitions[i] for i in found]
            streaks[label] = self._streaks.get(label, 0) + 1 if held_by_global(shift, natural, PLANTED / 2) else 0
            if label in self.defender.known():
                continue
            if singles_out(found, cluster) or held_by_global(shift, natural) or held_by_global_streak(streaks[label]):
                self._make_known(label, finding.triggers[label], server_round)
            elif self.cfg["continuous-retest"] and self._everyone(partitions) and (
                    partly_singles_out(found, cluster) or (lone is not None and found == cluster)):
                self._suspects[label] = (finding.triggers[label], outlying[str(label)])
        self._streaks = streaks
        scan = {"scanned": "cluster" if lone is None else "most apart client",
                "cluster": [partitions[i] for i in cluster], "flagged": finding.flagged, "scores": candidate_scores,
                "outliers": outlying, "evidence": evidence, "confirmed": list(self.defender.known()),
                "new": [label for label, at in self._known_at.items() if at == server_round],
                "suspects": sorted(self._suspects),
                "inversion_seconds": finding.record.get("inversion_seconds", 0.0)}
        self.log({"round": server_round, "defense": self.cfg["defense"], "purified": False, **finding.record, **scan})
        return scan

    def _scan_due(self, server_round: int, tripped: bool = False) -> bool:
        """Whether this round scans: no label catching yet, the round `_back_off` set reached or the watch `tripped`,
        and neither the round after a label became known (a new label gets a round to catch) nor one a `_retest` made
        a label known in."""
        return (not self._catching and (server_round >= self._next_scan or tripped)
                and not {server_round - 1, server_round} & set(self._known_at.values()))

    def _everyone(self, partitions: list[int]) -> bool:
        """Whether every client of the federation replied this round."""
        return len(set(partitions)) == self.cfg["num-clients"]

    def _make_known(self, label: int, stamp: Stamp, server_round: int) -> None:
        self.defender.remember(label, stamp)
        self._known_at[label] = server_round
        self._known_natural = None

    def _retest(self, server_round: int, states: list[dict[str, torch.Tensor]],
                partitions: list[int]) -> dict[str, Any]:
        """Score the round's clients with the trigger of each label the last scan flagged on part of its cluster
        (`partly_singles_out`) and make known those whose trigger `stands_out_again`; a suspect is tried once. The
        record, per label, and the labels made known (`new`)."""
        suspects, self._suspects = self._suspects, {}
        record: dict[str, Any] = {"new": []}
        for label, (stamp, before) in suspects.items():
            scores = client_scores(self.model, states, self.screen_set.x, self.screen_set.y, {label: stamp},
                                   self.device)
            found = [partitions[i] for i in outliers(scores, self.cfg["screen-margin"])]
            again = stands_out_again(found, before)
            record[str(label)] = {"scores": [round(v, 4) for v in scores], "outliers": found, "before": before,
                                  "again": again}
            if again:
                self._make_known(label, stamp, server_round)
                record["new"].append(label)
        self.log({"round": server_round, "defense": self.cfg["defense"], "purified": False, "retested": record})
        return record

    def _watch(self, states: list[dict[str, torch.Tensor]], partitions: list[int]) -> dict[str, Any]:
        """The round's most alike pair of client updates and its robust z (`alike_pair`); tripped at
        `continuous-watch-z` and above."""
        updates = torch.stack([flat_update(s, self._sent) for s in states])
        z, (i, j) = alike_pair(updates)
        apart_z, k = most_apart(updates)
        return {"z": round(z, 2), "pair": [partitions[i], partitions[j]],
                "tripped": 0 < self.cfg["continuous-watch-z"] <= z,
                "apart": {"z": round(apart_z, 2), "client": partitions[k]}}

    def _back_off(self, server_round: int, scan: dict[str, Any], everyone: bool, tripped: bool = False) -> None:
        """Set the round of the next scan: a scan that flagged nothing in a round every client of the federation took
        part in (`everyone`) and the watch did not call (`tripped`) doubles the gap, up to `continuous-scan-max-gap`;
        any other returns it to `continuous-scan-every` (with clients sampled, the next round's clients are others, of
        whom it says nothing; a tripped watch says something is there the scan may find a round later)."""
        every = self.cfg["continuous-scan-every"]
        cap = max(every, self.cfg["continuous-scan-max-gap"])
        self._gap = min(2 * self._gap, cap) if everyone and not scan["flagged"] and not tripped else every
        self._next_scan = server_round + self._gap
        scan["next_scan"] = self._next_scan

    def _refresh(self, labels: list[int], states: list[dict[str, torch.Tensor]], weights: list[float],
                 generator: torch.Generator) -> dict[str, Any]:
        """Invert the triggers of `labels` (those that left the clients out) again on the model of the clients left
        out this round, where the backdoor is at full strength, and keep a new trigger when it moves that model's clean
        images further beyond the clean reference models than the known one does and moves the references by at most
        `nc-transfer-max`, what the scan allows a flagged label's trigger on them (more is a natural feature: in the
        default setting's seed 0 at 2921581 the refresh of Bag, flagged beside the target, moved them 0.26, then
        scored benign clients up to 0.66 and left one out in 4 rounds; the other 12 refreshes of the default, hard
        and windows runs' records then, 11 of them the target's, moved them at most 0.046); a label is tried in up
        to `continuous-refreshes` rounds and not after a new trigger was kept. The record, per label."""
        self.model.load_state_dict(average_states(states, weights))
        record: dict[str, Any] = {}
        for label in labels:
            old = self.defender.known()[label]
            self._refreshes[label] = self._refreshes.get(label, 0) + 1
            new = invert_label(self.model, self.defender.clean, label, self.cfg, generator, self.device)
            shift_old = trigger_shift(self.model, self.screen_set.x, self.screen_set.y, old, label, self.device)
            natural_old = self._natural_shift({label: old})
            entry = {"shift": round(shift_old, 4), "reference_shift": round(natural_old, 4), "kept": False}
            if new is not None:
                shift = trigger_shift(self.model, self.screen_set.x, self.screen_set.y, new, label, self.device)
                natural = self._natural_shift({label: new})
                entry.update(new_shift=round(shift, 4), new_reference_shift=round(natural, 4),
                             kept=shift - natural > shift_old - natural_old and natural <= self.cfg["nc-transfer-max"])
            if entry["kept"]:
                self.defender.refresh(label, new)
                self._refreshes[label] = self.cfg["continuous-refreshes"]
                self._known_natural = None
            record[str(label)] = entry
        return record

    def _check(self, server_round: int, arrays: ArrayRecord, generator: torch.Generator,
               record: dict[str, Any]) -> ArrayRecord:
        """Purify the aggregate with the known triggers in the round they became known, and later when they move it
        more than they move the clean reference models (a natural feature moves both); the model to keep."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        if self._known_natural is None:  # the reference models and the known triggers are fixed between scans
            self._known_natural = self._natural_shift()
        shift, natural = self._shift(self.model), self._known_natural
        record.update(aggregate_shift=round(shift, 4), reference_shift=round(natural, 4))
        first = server_round in self._known_at.values()
        if not first and shift - natural <= self.cfg["continuous-purify-above"]:
            return arrays
        outcome = self.defender.purify_known(self.model, generator)
        self.log({"round": server_round, **outcome.record, "aggregate_shift": shift})
        record["purified"] = True
        return ArrayRecord(outcome.model.state_dict())

    def _shift(self, model: torch.nn.Module, triggers: Mapping[int, Stamp] | None = None) -> float:
        """The largest trigger shift on `model` of the known (label, trigger) pairs, or of `triggers`."""
        triggers = self.defender.known() if triggers is None else triggers
        return largest_shift(model, self.screen_set.x, self.screen_set.y, triggers, self.device)

    def _natural_shift(self, triggers: Mapping[int, Stamp] | None = None) -> float:
        """`_shift` on the clean reference models, averaged (0 before they exist): what natural features move."""
        return mean_rate(self.defender.references(), lambda ref: self._shift(ref, triggers))
