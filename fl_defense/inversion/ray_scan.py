"""Spread a label scan over a pool of long-lived Ray actors, one label per job (for servers with GPUs).

The actors ask for no CPU: inside a Flower simulation the client actors hold every CPU, so anything
that waits for one never runs (../shared/notes). They are started once per Ray session and reused by
every later scan of the run: a fresh worker per label would import torch each time (about 3 s per
label on 2 cores). With `num_gpus` > 0 each actor holds that GPU fraction and Ray places them across
the GPUs; on a CPU-only machine there is one actor per core, each with one torch thread.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from fl_defense.inversion.neural_cleanse import LabelInversion, NCSettings, invert


class _Inverter:
    """One pool member: runs single-label inversions on its device with its own torch threads."""

    def __init__(self, threads: int, use_gpu: bool) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def invert(self, model: nn.Module, images: torch.Tensor, label: int, seed: int,
               settings: NCSettings) -> LabelInversion:
        return invert(model, images, [label], settings, torch.Generator().manual_seed(seed), self.device)[0]


_POOL: dict[str, Any] = {}


def pool_size(resources: dict[str, float], num_gpus: float, labels: int) -> int:
    """Actors worth starting: one per GPU share when GPUs are asked for, else one per CPU; never more than labels."""
    slots = resources.get("GPU", 0.0) / num_gpus if num_gpus > 0 else resources.get("CPU", 1.0)
    return max(1, min(labels, int(slots)))


def _actors(num_gpus: float, labels: int) -> list[Any]:
    """The session's pool, started on first use and again after Ray was restarted or the shape changed.

    A restarted local Ray numbers its jobs from 1 again, so the job id alone would hand a new session the
    previous session's dead actors; the driver's node id is new with every start.
    """
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    size = pool_size(ray.cluster_resources(), num_gpus, labels)
    context = ray.get_runtime_context()
    key = (context.get_node_id(), context.get_job_id(), size, num_gpus)
    if _POOL.get("key") != key:
        threads = 1 if num_gpus > 0 else max(1, (os.cpu_count() or 1) // size)
        remote = ray.remote(num_cpus=0, num_gpus=num_gpus)(_Inverter)
        _POOL.update(key=key, actors=[remote.remote(threads, num_gpus > 0) for _ in range(size)])
    return _POOL["actors"]


def invert_on_ray(model: nn.Module, images: torch.Tensor, labels: list[int], seeds: list[int],
                  settings: NCSettings, num_gpus: float) -> list[LabelInversion]:
    """The same per-label inversions as the loop (same seeds), as jobs on the actor pool; starts Ray if needed."""
    import ray
    from ray.util import ActorPool

    pool = ActorPool(_actors(num_gpus, len(labels)))
    model_ref, images_ref = ray.put(copy.deepcopy(model).cpu()), ray.put(images.cpu())
    jobs = list(zip(labels, seeds, strict=True))
    return list(pool.map(lambda actor, job: actor.invert.remote(model_ref, images_ref, job[0], job[1], settings), jobs))
