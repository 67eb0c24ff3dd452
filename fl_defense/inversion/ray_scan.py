"""Spread a label scan over Ray tasks, one label each, with a GPU fraction per task (for multi-GPU servers).

Tasks ask for no CPU: inside a Flower simulation the client actors hold every CPU, and a task that
waits for one would never run. On a CPU-only machine this mode only adds Ray's overhead; it is for
servers with several GPUs, where `num_gpus` lets Ray place the labels across them.
"""

from __future__ import annotations

import torch
from torch import nn

from fl_defense.inversion.neural_cleanse import LabelInversion, NCSettings, invert


def _invert_one(model: nn.Module, images: torch.Tensor, label: int, seed: int, settings: NCSettings,
                use_gpu: bool) -> LabelInversion:
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    return invert(model, images, [label], settings, torch.Generator().manual_seed(seed), device)[0]


def invert_on_ray(model: nn.Module, images: torch.Tensor, labels: list[int], seeds: list[int],
                  settings: NCSettings, num_gpus: float) -> list[LabelInversion]:
    """The same per-label inversions as the loop (same seeds), run as Ray tasks; starts Ray if needed."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    task = ray.remote(num_cpus=0, num_gpus=num_gpus)(_invert_one)
    model_ref, images_ref = ray.put(model.cpu()), ray.put(images.cpu())
    futures = [task.remote(model_ref, images_ref, t, s, settings, num_gpus > 0) for t, s in zip(labels, seeds)]
    return list(ray.get(futures))
