"""Flower ServerApp: federated training with per-round BA/ASR, the defense hook, and the run's report.

`app` is what `flwr run .` starts (config from the run config); `make_server_app(cfg, out_dir)`
is what the CLI runs in-process, where Flower passes no run config.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm import tqdm

from clients.client_app import SHADOW_ARRAYS_KEY
from fl_defense.attacks import evaluation_attack
from fl_defense.config import resolve, schedule_rounds
from fl_defense.data import cached_dataset, split_for
from fl_defense.defense import DefenseMemory, defense_rounds, run_defense, server_clean_set
from fl_defense.metrics import ba_asr, clean_accuracy, durability, extra_asr
from fl_defense.models import BackdoorModel, build_model
from fl_defense.training import resolve_device
from server import checkpoint
from server.aggregation import build_aggregator
from server.reporting import RunReport, format_table
from server.shadow import ShadowStrategy
from server.strategy import DefenseStrategy, Resumed
from server.validation import ReplySpec

NODE_WAIT_SECONDS = 300


def default_out_dir(cfg: dict[str, Any]) -> Path:
    """`out-dir`, or runs/<dataset>-<attack>-<timestamp> under the current folder."""
    if cfg["out-dir"]:
        return Path(cfg["out-dir"])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['dataset']}-{cfg['attack']}-{stamp}"


def _wait_for_nodes(grid: Grid, n: int) -> list[int]:
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n} client nodes connected in {NODE_WAIT_SECONDS} s")
        time.sleep(0.2)
    return nodes


def _node_partitions(grid: Grid, nodes: list[int], run_config: str) -> dict[int, int]:
    """Ask every node for its partition id (node ids are random; partitions are what the seed fixes)."""
    content = RecordDict({"config": ConfigRecord({"run-config": run_config})})
    msgs = [Message(content=content, dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=NODE_WAIT_SECONDS):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to start: {reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(reply.content["client"]["partition-id"])
    return mapping


def run_durability(cfg: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per attack window, rounds until ASR < 0.10 after the last attacking round (see metrics.durability)."""
    if cfg["attack"] == "none":
        return {}
    return {"durability": durability(rounds, schedule_rounds(cfg["attack-schedule"], cfg["rounds"]))}


def run_server(grid: Grid, cfg: dict[str, Any], out_dir: Path, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole experiment against a Grid; returns the results that are also in results.json.

    With `resume` (a checkpoint of `server.checkpoint`) the run continues after the checkpoint's round, from
    its model, rule, shadow and defense states and random states, and gives the numbers an uninterrupted run
    would have given.
    """
    torch.manual_seed(cfg["seed"])
    device = resolve_device(cfg["device"])
    data = cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])
    spec = data.spec
    eval_attack = evaluation_attack(cfg, spec.shape, spec.num_classes)
    model = build_model(cfg["model"], spec).to(device)
    done = 0 if resume is None else int(resume["round"])
    report = RunReport(out_dir, cfg, None if resume is None else resume["results"])
    run_config = json.dumps(cfg)

    bs = cfg["eval-batch-size"]

    def measure(m: BackdoorModel) -> tuple[float, float]:
        return ba_asr(m, data.test_x, data.test_y, eval_attack, bs, device, cfg["amp"])

    clean = server_clean_set(cfg, data)
    scheduled = set(defense_rounds(cfg))
    memory = DefenseMemory() if resume is None else DefenseMemory.from_state(resume["defense"], model)

    def defend(server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Run the configured defense on the aggregate of a scheduled round; what it returns is broadcast next."""
        if server_round not in scheduled:
            return arrays
        model.load_state_dict(arrays.to_torch_state_dict())
        ba0, asr0 = measure(model)
        generator = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + server_round)
        outcome = run_defense(model, clean, spec.num_classes, cfg, device, generator, memory)
        ba1, asr1 = measure(outcome.model)
        record = {"round": server_round, **outcome.record, "ba_before": ba0, "asr_before": asr0,
                  "ba_after": ba1, "asr_after": asr1}
        if "flagged" in record:
            record["true_target_found"] = cfg["attack"] != "none" and record["flagged"][:1] == [cfg["target-label"]]
        report.log_defense(record)
        print(f"[defense {cfg['defense']} @ round {server_round}] flagged {record.get('flagged', '-')}  "
              f"BA {ba0:.4f} -> {ba1:.4f}  ASR {asr0:.4f} -> {asr1:.4f}", flush=True)
        return ArrayRecord(outcome.model.state_dict())

    nodes = _wait_for_nodes(grid, cfg["num-clients"])
    node_partition = _node_partitions(grid, nodes, run_config)
    initial = ArrayRecord(model.state_dict())
    reply_spec = ReplySpec.from_arrays(initial, (n for n, _ in model.named_parameters()),
                                 {pid: len(idx) for pid, idx in enumerate(split_for(cfg).clients)}, cfg["reply-max-norm"],
                                 extra_array_keys=[SHADOW_ARRAYS_KEY])
    strategy = DefenseStrategy(build_aggregator(cfg), node_partition, cfg["seed"], on_aggregated=defend, spec=reply_spec,
                               min_replies=cfg["min-replies"])

    def clean_set_accuracy(arrays: ArrayRecord) -> float:
        model.load_state_dict(arrays.to_torch_state_dict())
        return clean_accuracy(model, clean.x, clean.y, bs, device)

    shadow = ShadowStrategy(strategy, initial, cfg, clean_set_accuracy) if cfg["defense"] == "shadow" else None
    shadow_scores: dict[int, tuple[float, float]] = {}
    start = initial
    if resume is not None:
        start = ArrayRecord(resume["arrays"])
        strategy.inner.load_state_dict(resume["aggregator"])
        if shadow is not None:
            shadow.load_state_dict(resume["shadow"])
        checkpoint.set_rng_state(resume["rng"])

    def deployed(ba: float, asr: float) -> tuple[dict[str, torch.Tensor] | None, float, float, dict[str, Any]]:
        """Under defense=shadow: the shadow's state and BA/ASR once it has trained (measured once per version),
        and the backbone's numbers as extra fields of the row."""
        if shadow is None:
            return None, ba, asr, {}
        extra: dict[str, Any] = {"backbone_ba": ba, "backbone_asr": asr, "deployed": "backbone"}
        if shadow.shadow is None:
            return None, ba, asr, extra
        state = shadow.shadow.to_torch_state_dict()
        if shadow.version not in shadow_scores:
            model.load_state_dict(state)
            shadow_scores[shadow.version] = measure(model)
        return state, *shadow_scores[shadow.version], {**extra, "deployed": "shadow"}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round += done
        if resume is not None and server_round == done:  # the checkpoint's own round, already reported
            last = report.results["rounds"][-1]
            return MetricRecord({"ba": last["ba"], "asr": last["asr"]})
        t = time.perf_counter()
        state = arrays.to_torch_state_dict()
        model.load_state_dict(state)
        shadow_state, ba, asr, extra = deployed(*measure(model))
        if shadow is not None and server_round in shadow.records:
            extra["shadow"] = shadow.records[server_round]
        if eval_attack.extra_triggers():
            model.load_state_dict(shadow_state or state)
            extra["asr_pieces"] = extra_asr(model, data.test_x, data.test_y, eval_attack, bs, device)
        row = report.log_round(server_round, ba, asr, strategy.rounds.get(server_round), time.perf_counter() - t,
                               extra)
        report.save_model(shadow_state or state, server_round, cfg)
        if server_round > 0:
            checkpoint.save(out_dir / "checkpoints" / checkpoint.NAME, {
                "round": server_round, "config": cfg, "arrays": state, "aggregator": strategy.inner.state_dict(),
                "shadow": None if shadow is None else shadow.state_dict(), "defense": memory.state_dict(),
                "results": report.results, "rng": checkpoint.rng_state()})
            loss = "-" if row.get("train_loss") is None else f"{row['train_loss']:.4f}"
            backbone = (f"  backbone BA {extra['backbone_ba']:.4f} ASR {extra['backbone_asr']:.4f}  "
                        f"shadow {extra['shadow']['state']}" if "shadow" in extra else "")
            pieces = ("  pieces " + " ".join(f"{v:.2f}" for v in extra["asr_pieces"].values())
                      if "asr_pieces" in extra else "")
            progress.update(1)
            progress.set_postfix(BA=f"{ba:.4f}", ASR=f"{asr:.4f}")
            tqdm.write(f"[round {server_round}/{cfg['rounds']}] BA {ba:.4f}  ASR {asr:.4f}  loss {loss}  "
                       f"attackers {len(row.get('attackers', []))}  {row.get('seconds', 0.0):.1f} s{pieces}{backbone}")
            sys.stdout.flush()
        return MetricRecord({"ba": ba, "asr": asr})

    progress = tqdm(total=cfg["rounds"], initial=done, desc="rounds", unit="round", file=sys.stderr, leave=False,
                    disable=not sys.stderr.isatty())
    outer = shadow or strategy
    result = (Resumed(outer, done) if done else outer).start(
        grid=grid, initial_arrays=start, num_rounds=cfg["rounds"] - done,
        train_config=ConfigRecord({"run-config": run_config}), evaluate_fn=evaluate)
    final = result.arrays if shadow is None else shadow.deployed(result.arrays)
    torch.save({"round": cfg["rounds"], "model": final.to_torch_state_dict(), "config": cfg},
               out_dir / "checkpoints" / "final.pt")
    progress.close()
    report.close(run_durability(cfg, report.results["rounds"]))
    print(format_table(report.results), flush=True)
    print(f"results: {out_dir / 'results.json'}   tensorboard --logdir {out_dir / 'tensorboard'}", flush=True)
    return report.results


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
