"""Where a run's numbers go: results.json (rewritten atomically each round, with the provenance of the code and
machine that made it) and TensorBoard."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from fl_defense.files import atomic_write_json
from fl_defense.metrics import filtering, filtering_over_run
from fl_defense.provenance import provenance
from fl_defense.server.strategy import RoundInfo

CURVES = {"ba": "BA", "asr": "ASR"}  # TensorBoard names of the row's fields where they differ


class RunReport:
    """Collects per-round metrics of one run and writes them to the run's output folder."""

    def __init__(self, out_dir: Path, cfg: dict[str, Any], resumed: dict[str, Any] | None = None) -> None:
        """`resumed`: the results of a checkpoint to continue from (rounds and defense records up to its round)."""
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(out_dir / "tensorboard"))
        self.results: dict[str, Any] = {"config": cfg, "provenance": provenance(), "rounds": [], "defense": []}
        self._t0 = time.perf_counter()
        if resumed is not None:
            self.results.update(rounds=list(resumed["rounds"]), defense=list(resumed["defense"]),
                                provenance=resumed.get("provenance"),
                                resumed_after=[*resumed.get("resumed_after", []), resumed["rounds"][-1]["round"]],
                                resumed_provenance=[*resumed.get("resumed_provenance", []), provenance()])
            self._t0 -= float(resumed.get("wall_seconds", 0.0))

    def log_round(self, server_round: int, fields: dict[str, Any], info: RoundInfo | None,
                  eval_seconds: float) -> dict[str, Any]:
        """One round's row: `fields` (`ba`, `asr` and what else the evaluation measured), what the round's training
        step learned (`info`), and what every wrapper decided; its numbers also as TensorBoard curves."""
        row: dict[str, Any] = {"round": server_round, "ba": fields["ba"], "asr": fields["asr"],
                               "eval_seconds": eval_seconds}
        if info is not None:
            _add_filtering(info)
            row.update({
                "train_loss": info.train_metrics.get("train-loss"),
                "seconds": info.seconds,
                "sampled": info.sampled,
                "malicious_sampled": info.malicious,
                "attackers": info.attacked,
                "failures": info.failures,
                "rejected": info.rejected,
                "skipped": info.skipped,
                **info.reports,
            })
        row.update(fields)
        self.results["rounds"].append(row)
        for key, value in fields.items():
            if isinstance(value, float):
                self.writer.add_scalar(CURVES.get(key, key), value, server_round)
        if info is not None:
            if row["train_loss"] is not None:
                self.writer.add_scalar("train_loss", row["train_loss"], server_round)
            self.writer.add_scalar("attackers", len(info.attacked), server_round)
            self.writer.add_scalar("seconds", info.seconds, server_round)
            for name, report in info.reports.items():
                for key, value in report.get("filtering", {}).items():
                    if key in ("precision", "recall", "f1", "fpr") and value is not None:
                        self.writer.add_scalar(f"filtering/{name}/{key}", value, server_round)
        self.writer.flush()
        self.save()
        return row

    def log_defense(self, record: dict[str, Any]) -> None:
        self.results["defense"].append(record)
        r = record["round"]
        for key in ("ba_before", "asr_before", "ba_after", "asr_after"):
            if key in record:
                self.writer.add_scalar(f"defense/{key}", record[key], r)
        self.save()

    def save(self) -> None:
        self.results["wall_seconds"] = time.perf_counter() - self._t0
        atomic_write_json(self.out_dir / "results.json", self.results)

    def close(self, extra: dict[str, Any] | None = None) -> None:
        """The run's last save: `extra`, and each filtering rule's precision/recall/F1/FPR over the whole run."""
        self.results.update(extra or {})
        names = sorted({k for row in self.results["rounds"] for k, v in row.items()
                        if isinstance(v, dict) and "filtering" in v})
        overall = {name: f for name in names if (f := filtering_over_run(self.results["rounds"], name)) is not None}
        if overall:
            self.results["filtering"] = overall
        self.save()
        self.writer.close()


LEFT_OUT = {"excluded": "partitions", "dropped": "partitions"}  # a report's left-out list -> its considered list


def _add_filtering(info: RoundInfo) -> None:
    """Score every wrapper or rule that left clients out this round against the round's ground truth."""
    for report in info.reports.values():
        for left_out, considered in LEFT_OUT.items():
            if isinstance(report.get(left_out), list) and isinstance(report.get(considered), list):
                report["filtering"] = filtering(report[considered], report[left_out], info.malicious)


def nothing_aggregated(results: dict[str, Any]) -> bool:
    """True when the run trained but every round was skipped (too few valid replies): its model is the initial one."""
    trained = [row for row in results["rounds"] if "skipped" in row]
    return bool(trained) and all(row["skipped"] for row in trained)


def format_table(results: dict[str, Any]) -> str:
    """The end-of-run summary: one line per round, then the defense's before/after and the final BA/ASR."""
    lines = [f"{'round':>5} {'BA':>7} {'ASR':>7} {'loss':>7} {'attackers':>9} {'seconds':>8}"]
    for row in results["rounds"]:
        loss = row.get("train_loss")
        lines.append(
            f"{row['round']:>5} {row['ba']:>7.4f} {row['asr']:>7.4f} "
            f"{'' if loss is None else f'{loss:.4f}':>7} {len(row.get('attackers', [])):>9} "
            f"{row.get('seconds', 0.0):>8.2f}")
    for rec in results.get("defense", []):
        if "ba_after" in rec:
            lines.append(
                f"defense {rec['defense']} @ round {rec['round']}: BA {rec['ba_before']:.4f} -> {rec['ba_after']:.4f}, "
                f"ASR {rec['asr_before']:.4f} -> {rec['asr_after']:.4f}")
    for w in results.get("durability", []):
        first, last_round = w["window"]
        fell = (f"ASR < 0.10 {w['rounds_to_fall']} rounds after" if w["rounds_to_fall"] is not None
                else f"ASR still >= 0.10 {w['observed']} rounds after")
        lines.append(f"attack window {first}-{last_round}: {fell} the last attacking round {w['last_attack']}")
    last = results["rounds"][-1]
    lines.append(f"final: BA {last['ba']:.4f}  ASR {last['asr']:.4f}  "
                 f"wall {results.get('wall_seconds', 0.0):.1f} s")
    return "\n".join(lines)
