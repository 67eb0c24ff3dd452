"""Figures: a run folder's and a sweep folder's plot.png are PNGs of the figure's size; other folders are refused.
(Every simulation test's run also writes its plot.png: tests/test_simulation.py opens one.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fl_defense.errors import ConfigError
from fl_defense.plotting import DPI, FIGSIZE
from fl_defense.simulations.cli import main


def _results(seed: int, asr_end: float) -> dict:
    """A results.json of 6 rounds: attackers in rounds 2-3, a defense call at round 4, a shadow's training model."""
    rounds = [{"round": r, "ba": 0.1 + 0.13 * r, "asr": min(1.0, asr_end * r / 3), "attackers": [1] if r in (2, 3)
               else [], "backbone_ba": 0.1 + 0.12 * r, "backbone_asr": 0.9} for r in range(6)]
    return {"config": {"attack": "badnets", "aggregation": "fedavg", "defense": "mcl", "seed": seed},
            "rounds": rounds, "defense": [{"round": 4, "defense": "mcl"}]}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_a_run_folder_plots_its_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results(0, 0.9)))
    assert main(["plot", str(tmp_path)]) == 0
    pixels = _pixels(tmp_path / "plot.png")
    assert pixels.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines, shading and text, not a blank canvas
    assert capsys.readouterr().out.strip() == str(tmp_path / "plot.png")


def test_a_run_figure_shows_the_clean_images_the_model_calls_the_target(tmp_path: Path) -> None:
    """Recorded per round, the model's own confusion with the target is drawn under ASR (the figure changes)."""
    results = _results(0, 0.9)
    (tmp_path / "without").mkdir()
    (tmp_path / "without" / "results.json").write_text(json.dumps(results))
    for r in results["rounds"]:
        r["clean_to_target"] = 0.3
    (tmp_path / "with").mkdir()
    (tmp_path / "with" / "results.json").write_text(json.dumps(results))
    assert main(["plot", str(tmp_path / "without")]) == 0 and main(["plot", str(tmp_path / "with")]) == 0
    without, drawn = _pixels(tmp_path / "without" / "plot.png"), _pixels(tmp_path / "with" / "plot.png")
    assert without.shape == drawn.shape and (without != drawn).any(axis=2).sum() > 200


def test_a_sweep_folder_plots_one_line_per_group(tmp_path: Path) -> None:
    runs = []
    for i, (defense, seed) in enumerate([("none", 0), ("none", 1), ("mcl", 0), ("mcl", 1)]):
        (tmp_path / f"run{i}").mkdir()
        asr = 0.9 if defense == "none" else 0.1
        (tmp_path / f"run{i}" / "results.json").write_text(json.dumps(_results(seed, asr)))
        runs.append({"point": {"defense": defense, "seed": seed}, "dir": f"run{i}", "status": "done"})
    runs.append({"point": {"defense": "ft", "seed": 0}, "dir": "missing", "status": "failed"})
    (tmp_path / "summary.json").write_text(json.dumps({"over": ["seed"], "runs": runs}))
    out = tmp_path / "figures" / "sweep.png"
    assert main(["plot", str(tmp_path), "--out", str(out)]) == 0
    assert _pixels(out).shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * 1.4 * DPI))


def test_a_folder_that_is_neither_is_refused_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds no rounds"):
        from fl_defense.simulations.plot import plot_folder

        plot_folder(tmp_path)
