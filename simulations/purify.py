"""`fl-defense purify`: run a server-side defense offline on a saved global model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from fl_defense.attacks import evaluation_attack
from fl_defense.config import ConfigError, resolve
from fl_defense.data import cached_dataset
from fl_defense.defense import run_defense, server_clean_set
from fl_defense.metrics import ba_asr
from fl_defense.models import build_model
from fl_defense.purification import PURIFIERS
from fl_defense.training import resolve_device
from fl_defense.files import atomic_torch_save, atomic_write_json, read_torch_file


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A run's checkpoint ({'model', 'config', 'round'}) or a bare state_dict, loaded with weights_only."""
    p = Path(path)
    blob = read_torch_file(p, "checkpoint")
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        return blob["model"], dict(blob.get("config") or {})
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob, {}
    raise ConfigError(f"checkpoint {str(p)!r} holds neither a state_dict nor an fl-defense checkpoint")


def purify(checkpoint: str, overrides: dict[str, Any], out_dir: Path | None) -> dict[str, Any]:
    """Rebuild the run's setting from the checkpoint's config (+ overrides), defend, and report BA/ASR."""
    name = overrides.get("defense")
    if name not in PURIFIERS:
        raise ConfigError(f"--defense {name!r} is not a purifier of a saved model; allowed: {', '.join(PURIFIERS)}")
    state, saved_cfg = load_checkpoint(checkpoint)
    saved_cfg.pop("out-dir", None)
    cfg = resolve({**saved_cfg, **overrides})
    device = resolve_device(cfg["device"])
    data = cached_dataset(cfg["dataset"], cfg["data-root"], cfg["download"])
    model = build_model(cfg["model"], data.spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {checkpoint!r} does not fit model {cfg['model']!r} on {cfg['dataset']!r}: "
                          f"{str(exc).splitlines()[0]}") from None
    attack = evaluation_attack(cfg, data.spec.shape, data.spec.num_classes)

    def measure(m: torch.nn.Module) -> tuple[float, float]:
        return ba_asr(m, data.test_x, data.test_y, attack, cfg["eval-batch-size"], device)

    ba0, asr0 = measure(model)
    t0 = time.perf_counter()
    outcome = run_defense(model, server_clean_set(cfg, data), data.spec.num_classes, cfg, device,
                          torch.Generator().manual_seed(cfg["seed"]))
    ba1, asr1 = measure(outcome.model)
    record = {"checkpoint": str(checkpoint), **outcome.record, "ba_before": ba0, "asr_before": asr0,
              "ba_after": ba1, "asr_after": asr1, "seconds": time.perf_counter() - t0, "config": cfg}
    print(f"{cfg['defense']}: flagged {record.get('flagged', '-')}  BA {ba0:.4f} -> {ba1:.4f}  "
          f"ASR {asr0:.4f} -> {asr1:.4f}  ({record['seconds']:.1f} s)", flush=True)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "purify.json", record)
        atomic_torch_save({"model": outcome.model.state_dict(), "config": cfg}, out_dir / "purified.pt")
    return record
