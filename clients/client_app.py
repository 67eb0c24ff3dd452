"""Flower ClientApp: every simulated client runs this; malicious ones poison (see `clients.behaviour`).

The run's configuration reaches the client in each train message (`run-config`, JSON), so a client
behaves the same under `flwr run .` and under the project's in-process simulation. What a client
keeps between rounds (its client defense's memory) lives in the node's `context.state`, which
Flower keeps per node for the whole run.

Under `strategy-wrapper=shadow` a train message may carry a second model (`protocol.SHADOW_ARRAYS`): the
client trains it the same way, with its own memory, and returns it under the same key. A client cannot
tell which of the two models the server deploys, so an attacker attacks both. The message keys are those
of `fl_defense.protocol`, which the server reads with the same names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_defense import protocol
from fl_defense.client_defenses import Memory
from fl_defense.clients.behaviour import local_update
from fl_defense.config import resolve
from fl_defense.data import split_for
from fl_defense.files import atomic_torch_save

app = ClientApp()

MEMORY_KEY = "client-defense-memory"
SHADOW_MEMORY_KEY = "shadow-client-defense-memory"


def memory_folder(cfg: dict, partition_id: int) -> Path | None:
    """Where the client also keeps its memory on disk (`client-checkpoints`, under the run's out-dir), so a
    resumed run, whose nodes start empty, restores it; None when off."""
    if not (cfg["client-checkpoints"] and cfg["out-dir"]):
        return None
    return Path(cfg["out-dir"]) / "client-state" / str(partition_id)


def load_memory(state: RecordDict, key: str = MEMORY_KEY, folder: Path | None = None,
                server_round: int = 0) -> Memory:
    """The client's memory (of the model trained under `key`) from its node state; if the node has none (its first
    round, or a resumed run) the newest copy on disk from before `server_round`; else empty."""
    record = state.get(key)
    if record is not None:
        return dict(record.to_torch_state_dict())
    saved = sorted((int(m.group(1)), f) for f in (folder.glob(f"{key}-r*.pt") if folder and folder.is_dir() else [])
                   if (m := re.fullmatch(rf"{re.escape(key)}-r(\d+)\.pt", f.name)) and int(m.group(1)) < server_round)
    return dict(torch.load(saved[-1][1], weights_only=True)) if saved else {}


def save_memory(state: RecordDict, memory: Memory, key: str = MEMORY_KEY, folder: Path | None = None,
                server_round: int = 0) -> None:
    """Store the client's memory in its node state for its next round, and on disk if `folder` is given (keeping
    this round's copy and the one before, so a crash while writing still leaves one)."""
    state[key] = ArrayRecord(memory)
    if folder is None or not memory:
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(memory, folder / f"{key}-r{server_round}.pt")
    rounds = sorted(int(m.group(1)) for f in folder.glob(f"{key}-r*.pt")
                    if (m := re.fullmatch(rf"{re.escape(key)}-r(\d+)\.pt", f.name)))
    for r in rounds[:-2]:
        (folder / f"{key}-r{r}.pt").unlink(missing_ok=True)


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _config(msg: Message) -> dict:
    cfg = resolve(json.loads(str(msg.content[protocol.CONFIG][protocol.RUN_CONFIG])))
    torch.set_num_threads(max(1, int(cfg["num-cpus"])))
    return cfg


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, loading the data now rather than in round 1."""
    split_for(_config(msg))
    content = RecordDict({protocol.CLIENT: ConfigRecord({protocol.PARTITION_ID: _partition_id(context)})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training on the received global model, and on the shadow model if one came with it."""
    cfg = _config(msg)
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    global_state = msg.content[protocol.ARRAYS].to_torch_state_dict()
    pid = _partition_id(context)
    folder = memory_folder(cfg, pid)
    memory = load_memory(context.state, MEMORY_KEY, folder, server_round)
    result = local_update(cfg, pid, server_round, global_state, memory)
    save_memory(context.state, memory, MEMORY_KEY, folder, server_round)
    content = RecordDict({
        protocol.ARRAYS: ArrayRecord(result.state),
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: result.num_examples,
                                        protocol.TRAIN_LOSS: result.train_loss}),
        protocol.CLIENT: ConfigRecord({protocol.PARTITION_ID: pid}),
    })
    if protocol.SHADOW_ARRAYS in msg.content.array_records:
        shadow_memory = load_memory(context.state, SHADOW_MEMORY_KEY, folder, server_round)
        shadow = local_update(cfg, pid, server_round, msg.content[protocol.SHADOW_ARRAYS].to_torch_state_dict(),
                              shadow_memory)
        save_memory(context.state, shadow_memory, SHADOW_MEMORY_KEY, folder, server_round)
        content[protocol.SHADOW_ARRAYS] = ArrayRecord(shadow.state)
    return Message(content=content, reply_to=msg)
