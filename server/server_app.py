"""Flower ServerApp: federated training with per-round BA/ASR, the defense hook, and the run's report.

`app` is what `flwr run .` starts (config from the run config); `make_server_app(cfg, out_dir)` is what the
CLI runs in-process, where Flower passes no run config. `ServerRun` wires the pieces to Flower's strategy
loop: the strategy chain (`server.strategy`), the defense (`fl_defense.defense.Defender`, shared with
`fl-defense purify`), the round's evaluation (`server.evaluation`), the checkpoints (`server.checkpoint`),
the report (`server.reporting`) and the console (`server.progress`).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_defense import protocol
from fl_defense.attacks import ground_truth
from fl_defense.config import resolve, schedule_rounds
from fl_defense.data import DatasetSpec, data_for, split_for
from fl_defense.defense import Defender, defense_rounds, server_clean_set
from fl_defense.metrics import Evaluator, clean_accuracy, durability
from fl_defense.models import BackdoorModel, build_model
from fl_defense.server import checkpoint
from fl_defense.server.aggregation import build_aggregator, trainable_names
from fl_defense.server.checkpoint import Checkpointer
from fl_defense.server.evaluation import RoundEvaluator
from fl_defense.server.progress import Progress
from fl_defense.server.reporting import RunReport
from fl_defense.server.strategy import DefenseStrategy, Resumed, ServerContext, chain_state, load_chain_state
from fl_defense.server.validation import ReplySpec, accept_partitions
from fl_defense.server.wrappers import wrap
from fl_defense.server.wrappers.continuous import ContinuousDefense
from fl_defense.training import resolve_device

NODE_WAIT_SECONDS = 300


def default_out_dir(cfg: dict[str, Any]) -> Path:
    """`out-dir`, or runs/<dataset>-<attack>-<timestamp> under the current folder."""
    if cfg["out-dir"]:
        return Path(cfg["out-dir"])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['dataset']}-{cfg['attack']}-{stamp}"


def wait_for_nodes(grid: Grid, n: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n} client nodes connected in {NODE_WAIT_SECONDS} s")
        time.sleep(0.2)
    return nodes


def node_partitions(grid: Grid, nodes: list[int], cfg: dict[str, Any]) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """Ask every node for its partition id (node ids are random; partitions are what the seed fixes). The nodes
    whose answer does not hold are refused (`validation.accept_partitions`); the run goes on without them."""
    content = RecordDict({protocol.CONFIG: ConfigRecord({protocol.RUN_CONFIG: json.dumps(cfg)})})
    msgs = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    accepted, refused = accept_partitions(grid.send_and_receive(msgs, timeout=NODE_WAIT_SECONDS), cfg["num-clients"])
    answered = set(accepted) | {r["node"] for r in refused}
    refused += [{"node": n, "reason": "it did not answer the partition query"} for n in nodes if n not in answered]
    for r in refused:
        print(f"fl-defense: warning: node {r['node']} refused for this run: {r['reason']}", file=sys.stderr)
    if len(accepted) < cfg["min-replies"]:
        raise RuntimeError(f"only {len(accepted)} of {len(nodes)} nodes hold a valid partition, fewer than "
                           f"min-replies {cfg['min-replies']}")
    return accepted, refused


def initial_model(cfg: dict[str, Any], spec: DatasetSpec) -> BackdoorModel:
    """The seeded fresh model, or the model of the `init-from` checkpoint (a ConfigError if it does not fit)."""
    model = build_model(cfg["model"], spec)
    if cfg["init-from"]:
        checkpoint.load_model(model, checkpoint.read_model(cfg["init-from"])[0], cfg["init-from"], cfg)
    return model


def run_durability(cfg: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per attack window, rounds until ASR < 0.10 after the last attacking round (see metrics.durability)."""
    if cfg["attack"] == "none":
        return {}
    return {"durability": durability(rounds, schedule_rounds(cfg["attack-schedule"], cfg["rounds"]))}


class ServerRun:
    """One experiment on the server. With `resume` (a checkpoint of `server.checkpoint`) the run continues after
    the checkpoint's round, from its model, strategy, defense and random states, and gives the numbers an
    uninterrupted run would have given."""

    def __init__(self, cfg: dict[str, Any], out_dir: Path, resume: dict[str, Any] | None = None) -> None:
        torch.manual_seed(cfg["seed"])  # the initial model
        self.cfg, self.out_dir, self.resume = cfg, out_dir, resume
        self.device = resolve_device(cfg["device"])
        self.data = data_for(cfg)
        self.evaluate = Evaluator(cfg, self.data, self.device)
        self.model = initial_model(cfg, self.data.spec).to(self.device)
        self.initial = ArrayRecord(self.model.state_dict())
        self.done = 0 if resume is None else int(resume["round"])
        self.clean = server_clean_set(cfg, self.data)
        self.defender = None if cfg["defense"] == "none" else Defender(
            cfg, self.clean, self.data.spec.num_classes, self.device, self.evaluate)
        if self.defender is not None and resume is not None:
            self.defender.load_state_dict(resume["defense"], self.model)
        self.scheduled = set(defense_rounds(cfg))
        self.report = RunReport(out_dir, cfg, None if resume is None else resume["results"])
        self.checkpoints = Checkpointer(out_dir, cfg)
        self.progress = Progress(cfg["rounds"], self.done)

    def truth(self, partitions: list[int], server_round: int) -> tuple[list[int], list[int]]:
        return ground_truth(self.cfg, partitions, server_round)

    def clean_set_accuracy(self, arrays: ArrayRecord) -> float:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return clean_accuracy(self.model, self.clean.x, self.clean.y, self.cfg["eval-batch-size"], self.device)

    def strategy(self, node_partition: dict[int, int]) -> DefenseStrategy:
        """The strategy chain: reply checks and records, the configured wrapper, the rule on trainable parameters
        (sampling among the accepted nodes)."""
        cfg = self.cfg
        sizes = {pid: len(idx) for pid, idx in enumerate(split_for(cfg).clients)}
        spec = ReplySpec.from_arrays(self.initial, trainable_names(cfg), sizes, cfg["reply-max-norm"])
        inner = wrap(build_aggregator(cfg, len(node_partition)), cfg, ServerContext(self.initial, self.clean_set_accuracy, self.truth))
        if cfg["defense-schedule"] == "continuous" and self.defender is not None:
            inner = ContinuousDefense(inner, cfg, self.defender, copy.deepcopy(self.model), self.clean, self.device,
                                      self.log_defense)
        strategy = DefenseStrategy(inner, node_partition, cfg["seed"], truth=self.truth, on_aggregated=self.defend,
                                   spec=spec, min_replies=cfg["min-replies"])
        if self.resume is not None:
            load_chain_state(strategy, self.resume["strategy"])
        return strategy

    def log_defense(self, record: dict[str, Any]) -> None:
        self.report.log_defense(record)
        self.progress.defense(record)

    def defend(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Run the configured defense on the aggregate of a scheduled round; what it returns is broadcast next."""
        if server_round not in self.scheduled or self.defender is None:
            return arrays
        self.model.load_state_dict(arrays.to_torch_state_dict())
        generator = torch.Generator().manual_seed(self.cfg["seed"] * 1_000_003 + server_round)
        outcome = self.defender(self.model, generator)
        self.log_defense({"round": server_round, **outcome.record})
        return ArrayRecord(outcome.model.state_dict())

    def on_round(self, strategy: DefenseStrategy, evaluator: RoundEvaluator, server_round: int,
                 arrays: ArrayRecord) -> MetricRecord:
        """Flower's `evaluate_fn`: measure the round, report it, checkpoint it, print it."""
        server_round += self.done
        if self.resume is not None and server_round == self.done:  # the checkpoint's own round, already reported
            last = self.report.results["rounds"][-1]
            return MetricRecord({"ba": last["ba"], "asr": last["asr"]})
        t = time.perf_counter()
        deployed, fields = evaluator(arrays)
        row = self.report.log_round(server_round, fields, strategy.rounds.get(server_round), time.perf_counter() - t)
        self.checkpoints.model("latest.pt", server_round, deployed)
        if server_round > 0:
            self.checkpoints.resume(server_round, arrays.to_torch_state_dict(), chain_state(strategy),
                                    {} if self.defender is None else self.defender.state_dict(), self.report.results)
            self.progress.round(row)
        return MetricRecord({"ba": row["ba"], "asr": row["asr"]})

    def run(self, grid: Grid) -> dict[str, Any]:
        """Run every round against a Grid; returns the results that are also in results.json."""
        cfg = self.cfg
        run_config = json.dumps(cfg)
        accepted, refused = node_partitions(grid, wait_for_nodes(grid, cfg["num-clients"]), cfg)
        self.report.results["refused_nodes"] = refused
        strategy = self.strategy(accepted)
        evaluator = RoundEvaluator(self.model, self.evaluate, strategy)
        start = self.initial if self.resume is None else ArrayRecord(self.resume["arrays"])
        if self.resume is not None:
            checkpoint.set_rng_state(self.resume["rng"])
        result = (Resumed(strategy, self.done) if self.done else strategy).start(
            grid=grid, initial_arrays=start, num_rounds=cfg["rounds"] - self.done, timeout=cfg["round-timeout"],
            train_config=ConfigRecord({protocol.RUN_CONFIG: run_config}),
            evaluate_fn=lambda r, arrays: self.on_round(strategy, evaluator, r, arrays))
        self.checkpoints.model("final.pt", cfg["rounds"], strategy.deployed(result.arrays).to_torch_state_dict())
        self.report.close(run_durability(cfg, self.report.results["rounds"]))
        self.progress.finish(self.report.results, self.out_dir)
        return self.report.results


def run_server(grid: Grid, cfg: dict[str, Any], out_dir: Path, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole experiment against a Grid (see `ServerRun`)."""
    return ServerRun(cfg, out_dir, resume).run(grid)


def make_server_app(cfg: dict[str, Any], out_dir: Path, resume: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp bound to an already-resolved config (for in-process simulation), resuming a checkpoint if given."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        run_server(grid, cfg, out_dir, resume)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of `flwr run .`: the config is pyproject's run config with --run-config overrides."""
    cfg = resolve(dict(context.run_config))
    run_server(grid, cfg, default_out_dir(cfg).resolve())
