"""Run one experiment in-process on Flower's Ray simulation backend, after checking every input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp import ClientApp

from fl_defense.attacks import evaluation_attack
from fl_defense.data import data_for, split_for
from fl_defense.errors import ConfigError
from fl_defense.server.server_app import initial_model, make_server_app
from fl_defense.simulations.run_folder import hold, prepare, stop_on_signals
from fl_defense.training import resolve_device


def preflight(cfg: dict[str, Any]) -> None:
    """Fail before any training on inputs that cannot work: data, split, trigger, target label, init-from model,
    device, CPUs, GPUs."""
    spec = data_for(cfg).spec
    try:
        split_for(cfg)
    except ValueError as exc:
        raise ConfigError(f"config key '{'alpha' if cfg['partition'] == 'dirichlet' else 'num-clients'}': the "
                          f"federated split cannot be made: {exc}") from None
    evaluation_attack(cfg, spec.shape, spec.num_classes)
    initial_model(cfg, spec)
    resolve_device(cfg["device"])
    if cfg["num-gpus"] > 0 and not torch.cuda.is_available():
        raise ConfigError(f"config key 'num-gpus': {cfg['num-gpus']} asked for, but no GPU is visible; allowed: 0")
    if not cfg["ray-address"]:
        _check_cpus(cfg, os.cpu_count() or 1)


def _check_cpus(cfg: dict[str, Any], cores: int) -> None:
    """A local Ray gives each client actor `num-cpus` of this machine's cores: more than it has never places an
    actor (the run would wait forever), and a tiny share starts more actors than a round has clients."""
    per_client, most = cfg["num-cpus"], max(cfg["clients-per-round"], cores)
    if per_client > cores:
        raise ConfigError(f"config key 'num-cpus': {per_client:g} per client, but this machine has {cores} cores; "
                          f"allowed: a number in (0, {cores}], or a ray-address with more")
    if cores / per_client > most:
        raise ConfigError(f"config key 'num-cpus': {per_client:g} per client would start {int(cores / per_client)} "
                          f"client actors on {cores} cores, more than the {most} a round can use; allowed: a number "
                          f">= {cores / most:g}")


def backend_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray client resources (one actor per `num-cpus` CPUs, fractional GPUs allowed) and a quiet Ray; with
    `ray-address`, Ray joins that running cluster instead of starting a local one."""
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    if cfg["ray-address"]:
        init_args["address"] = cfg["ray-address"]
    return {"client_resources": {"num_cpus": cfg["num-cpus"], "num_gpus": cfg["num-gpus"]}, "init_args": init_args}


def start_ray(backend: dict[str, Any]) -> None:
    """Start Ray now, with Flower's own start-up (its RayBackend's `ray.init`: `backend`'s init_args, the driver's
    sys.path as the workers' PYTHONPATH), so that the run's signal handlers go in after the ones Ray installs when
    it starts (`run_folder.stop_on_signals`). `run_simulation` then finds Ray running and does not start it again;
    it stops Ray when the run ends. Inside a Ray worker (a sweep on Ray) Ray already runs and nothing happens."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    if not ray.is_initialized():
        RayBackend(backend)  # creates no actor: the pool is built by run_simulation's backend


def run_experiment(cfg: dict[str, Any], out_dir: Path, client_app: ClientApp | None = None,
                   resume: dict[str, Any] | None = None, replace: bool | None = None) -> dict[str, Any]:
    """Check inputs, run the federated simulation holding its folder (`run_folder.hold`: a lock; Ctrl-C and
    SIGTERM end it resumably, `run_folder.stop_on_signals`), and return the results written to results.json.

    `client_app` replaces the project's ClientApp (e.g. one that injects faults, to test the server);
    `resume` is a checkpoint (`server.checkpoint.load`) to continue from; `replace` False refuses a folder that
    holds an earlier run, True removes that run first (`run_folder.prepare`), None leaves the folder as it is.
    """
    preflight(cfg)
    from fl_defense.clients.client_app import app
    from flwr.simulation import run_simulation

    with hold(out_dir):
        if replace is not None:
            prepare(out_dir, overwrite=replace)
        server_app, backend = make_server_app(cfg, out_dir, resume), backend_config(cfg)
        start_ray(backend)
        with stop_on_signals(out_dir):
            run_simulation(server_app=server_app, client_app=client_app or app, num_supernodes=cfg["num-clients"],
                           backend_config=backend)
    results_file = out_dir / "results.json"
    if not results_file.is_file():
        raise RuntimeError(f"the simulation ended without writing {results_file}; see the log above")
    return json.loads(results_file.read_text())
