"""`fl-defense purify` on a saved model: config from the checkpoint, overrides, outputs on disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from fl_defense.config import resolve
from fl_defense.simulations.purify import purify


def test_purify_checkpoint_writes_report_and_model(bd, tmp_path: Path) -> None:  # noqa: ANN001 - fixture
    cfg = resolve({"target-label": bd.target, "trigger-size": 4, "eval-batch-size": 2000})
    checkpoint = tmp_path / "final.pt"
    torch.save({"round": 3, "model": bd.model.state_dict(), "config": cfg}, checkpoint)
    record = purify(str(checkpoint), {"defense": "nc-unlearn", "inversion": "nc", "nc-images": "500", "ft-epochs": "3"},
                    tmp_path / "out")
    assert record["asr_before"] > 0.9
    assert record["flagged"][:1] == [bd.target]
    assert record["asr_after"] < 0.2
    assert record["config"]["defense"] == "nc-unlearn" and record["config"]["ft-epochs"] == 3
    on_disk = json.loads((tmp_path / "out" / "purify.json").read_text())
    assert on_disk["asr_after"] == record["asr_after"]
    purified = torch.load(tmp_path / "out" / "purified.pt", weights_only=True)
    assert set(purified["model"]) == set(bd.model.state_dict())
