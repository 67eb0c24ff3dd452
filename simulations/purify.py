"""`fl-defense purify`: run a server-side defense offline on a saved global model, as the server would."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fl_defense.config import resolve
from fl_defense.data import data_for
from fl_defense.defense import Defender, server_clean_set
from fl_defense.errors import ConfigError
from fl_defense.files import atomic_torch_save, atomic_write_json, ensure_writable_folder
from fl_defense.metrics import Evaluator
from fl_defense.models import build_model
from fl_defense.provenance import provenance
from fl_defense.registry import PURIFIERS
from fl_defense.server.checkpoint import load_model, read_model
from fl_defense.training import resolve_device


def purify(checkpoint: str, overrides: dict[str, Any], out_dir: Path | None) -> dict[str, Any]:
    """Rebuild the run's setting from the checkpoint's config (+ overrides), defend, and report BA/ASR."""
    name = overrides.get("defense")
    if name not in PURIFIERS:
        raise ConfigError(f"--defense {name!r} is not a purifier of a saved model; allowed: "
                          f"{', '.join(PURIFIERS.entries)}")
    if out_dir is not None:
        ensure_writable_folder(out_dir, "--out")
    state, saved_cfg = read_model(checkpoint)
    saved_cfg.pop("out-dir", None)
    cfg = resolve({**saved_cfg, **overrides})
    device = resolve_device(cfg["device"])
    data = data_for(cfg)
    model = build_model(cfg["model"], data.spec)
    load_model(model, state, checkpoint, cfg)
    t0 = time.perf_counter()
    defender = Defender(cfg, server_clean_set(cfg, data), data.spec.num_classes, device, Evaluator(cfg, data, device))
    outcome = defender(model, torch.Generator().manual_seed(cfg["seed"]))
    record = {"checkpoint": str(checkpoint), **outcome.record, "seconds": time.perf_counter() - t0, "config": cfg,
              "provenance": provenance()}
    print(f"{cfg['defense']}: flagged {record.get('flagged', '-')}  BA {record['ba_before']:.4f} -> "
          f"{record['ba_after']:.4f}  ASR {record['asr_before']:.4f} -> {record['asr_after']:.4f}  "
          f"({record['seconds']:.1f} s)", flush=True)
    if out_dir is not None:
        atomic_write_json(out_dir / "purify.json", record)
        atomic_torch_save({"model": outcome.model.state_dict(), "config": cfg}, out_dir / "purified.pt")
    return record
