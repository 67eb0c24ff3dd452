"""Shared by the benchmarks: real Fashion-MNIST, the server's clean set, centrally trained models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl_defense.attacks import Attack, evaluation_attack
from fl_defense.config import resolve
from fl_defense.data import ImageData, cached_dataset, hold_out, to_float
from fl_defense.models import BackdoorModel, build_model
from fl_defense.purification import CleanSet
from fl_defense.training import train_local

CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass
class Setting:
    """A model trained on real data (backdoored or clean), its trigger, and the server's clean set."""

    cfg: dict[str, Any]
    model: BackdoorModel
    attack: Attack
    clean: CleanSet
    data: ImageData


def central_model(attack: str, seed: int, target: int, n_train: int = 20000, epochs: int = 2,
                  poison_rate: float = 0.1) -> Setting:
    """Train the default model centrally (cached on disk); `attack='none'` gives a clean model.

    The trigger returned for a clean model is the BadNets one, so ASR measures the trigger's base rate.
    """
    cfg = resolve({"attack": attack, "seed": seed, "target-label": target, "poison-rate": poison_rate,
                   "device": "cpu"})
    data = cached_dataset(cfg["dataset"], "", True)
    clean_idx, rest = hold_out(len(data.train_y), cfg["clean-fraction"], seed)
    atk = evaluation_attack(cfg, data.spec.shape, data.spec.num_classes)
    model = build_model(cfg["model"], data.spec)
    path = CACHE / f"{attack}-s{seed}-t{target}-n{n_train}-e{epochs}-p{poison_rate}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        idx = torch.from_numpy(rest[:n_train])
        train_local(model, data.train_x, data.train_y, idx, epochs=epochs, batch_size=64, lr=0.05, momentum=0.9,
                    weight_decay=5e-4, generator=g, device=torch.device("cpu"),
                    batch_hook=None if attack == "none" else atk.poison_batch)
        CACHE.mkdir(exist_ok=True)
        torch.save(model.state_dict(), path)
    clean = CleanSet(to_float(data.train_x[torch.from_numpy(clean_idx)]), data.train_y[torch.from_numpy(clean_idx)])
    return Setting(cfg, model.eval(), atk, clean, data)
