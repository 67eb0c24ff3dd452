"""Run one experiment in-process on Flower's Ray simulation backend, after checking every input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp import ClientApp

from fl_defense.attacks import evaluation_attack
from fl_defense.data import data_for
from fl_defense.errors import ConfigError
from fl_defense.training import resolve_device


def preflight(cfg: dict[str, Any]) -> None:
    """Fail before any training on inputs that cannot work: data, trigger, target label, device, GPUs."""
    spec = data_for(cfg).spec
    evaluation_attack(cfg, spec.shape, spec.num_classes)
    resolve_device(cfg["device"])
    if cfg["num-gpus"] > 0 and not torch.cuda.is_available():
        raise ConfigError(f"config key 'num-gpus': {cfg['num-gpus']} asked for, but no GPU is visible; allowed: 0")


def backend_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray client resources (one actor per `num-cpus` CPUs, fractional GPUs allowed) and a quiet Ray; with
    `ray-address`, Ray joins that running cluster instead of starting a local one."""
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    if cfg["ray-address"]:
        init_args["address"] = cfg["ray-address"]
    return {"client_resources": {"num_cpus": cfg["num-cpus"], "num_gpus": cfg["num-gpus"]}, "init_args": init_args}


def run_experiment(cfg: dict[str, Any], out_dir: Path, client_app: ClientApp | None = None,
                   resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check inputs, run the federated simulation, and return the results written to results.json.

    `client_app` replaces the project's ClientApp (e.g. one that injects faults, to test the server);
    `resume` is a checkpoint (`server.checkpoint.load`) to continue from.
    """
    preflight(cfg)
    from fl_defense.clients.client_app import app
    from fl_defense.server.server_app import make_server_app
    from flwr.simulation import run_simulation

    out_dir.mkdir(parents=True, exist_ok=True)
    run_simulation(server_app=make_server_app(cfg, out_dir, resume), client_app=client_app or app,
                   num_supernodes=cfg["num-clients"], backend_config=backend_config(cfg))
    results_file = out_dir / "results.json"
    if not results_file.is_file():
        raise RuntimeError(f"the simulation ended without writing {results_file}; see the log above")
    return json.loads(results_file.read_text())
