"""Flower ClientApp: every simulated client runs this; malicious ones poison (see `clients.behaviour`).

The run's configuration reaches the client in each train message (`run-config`, JSON), so a client
behaves the same under `flwr run .` and under the project's in-process simulation. What a client
keeps between rounds (its client defense's memory) lives in the node's `context.state`, which
Flower keeps per node for the whole run.

Under `defense=shadow` a train message may carry a second model (`SHADOW_ARRAYS_KEY`): the client
trains it the same way, with its own memory, and returns it under the same key. A client cannot
tell which of the two models the server deploys, so an attacker attacks both.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.behaviour import local_update, split_for
from fl_defense.client_defenses import Memory
from fl_defense.config import resolve

app = ClientApp()

MEMORY_KEY = "client-defense-memory"
SHADOW_ARRAYS_KEY = "shadow-arrays"
SHADOW_MEMORY_KEY = "shadow-client-defense-memory"


def load_memory(state: RecordDict, key: str = MEMORY_KEY) -> Memory:
    """The client's memory (of the model trained under `key`) from its node state; empty before its first round."""
    record = state.get(key)
    return dict(record.to_torch_state_dict()) if record is not None else {}


def save_memory(state: RecordDict, memory: Memory, key: str = MEMORY_KEY) -> None:
    """Store the client's memory in its node state for its next round."""
    state[key] = ArrayRecord(memory)


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _config(msg: Message) -> dict:
    cfg = resolve(json.loads(str(msg.content["config"]["run-config"])))
    torch.set_num_threads(max(1, int(cfg["num-cpus"])))
    return cfg


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, loading the data now rather than in round 1."""
    split_for(_config(msg))
    content = RecordDict({"client": ConfigRecord({"partition-id": _partition_id(context)})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training on the received global model, and on the shadow model if one came with it."""
    cfg = _config(msg)
    server_round = int(msg.content["config"]["server-round"])
    global_state = msg.content["arrays"].to_torch_state_dict()
    pid = _partition_id(context)
    memory = load_memory(context.state)
    result = local_update(cfg, pid, server_round, global_state, memory)
    save_memory(context.state, memory)
    content = RecordDict({
        "arrays": ArrayRecord(result.state),
        "metrics": MetricRecord({"num-examples": result.num_examples, "train-loss": result.train_loss}),
        "client": ConfigRecord({"partition-id": pid, "malicious": result.malicious, "attacked": result.attacked}),
    })
    if SHADOW_ARRAYS_KEY in msg.content.array_records:
        shadow_memory = load_memory(context.state, SHADOW_MEMORY_KEY)
        shadow = local_update(cfg, pid, server_round, msg.content[SHADOW_ARRAYS_KEY].to_torch_state_dict(),
                              shadow_memory)
        save_memory(context.state, shadow_memory, SHADOW_MEMORY_KEY)
        content[SHADOW_ARRAYS_KEY] = ArrayRecord(shadow.state)
    return Message(content=content, reply_to=msg)
