"""Figures of a run's results.json and of a sweep's runs: BA and ASR per round, what a reader looks at first.

A run's figure: BA and ASR of the deployed model per round (and of the training model where a strategy wrapper
deploys another one, e.g. the shadow), the share of clean non-target images the model calls the target (which ASR
counts too, `fl_defense.metrics.measure`), the defense calls marked, the rounds in which attackers were sampled
shaded. A sweep's figure: one line per group of runs that differ only in the averaged axes (`--over`, the
seeds by default), the mean over the group's runs with a band of one standard deviation.

Matplotlib (a dependency of the package) draws off-screen (Agg), so this runs on a server without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fl_defense.metrics import attack_windows

FIGSIZE = (9.0, 4.5)
DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(results: Mapping[str, Any], path: Path, title: str | None = None) -> Path:
    """Write `path` (PNG): the run's BA and ASR per round, defense calls and attack windows."""
    plt = _pyplot()
    rows = results["rounds"]
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    attacked = [r["round"] for r in rows if r.get("attackers")]
    for i, (start, end) in enumerate(attack_windows(attacked)):
        ax.axvspan(start - 0.5, end + 0.5, color="tab:red", alpha=0.08, label="attackers sampled" if i == 0 else None)
    ax.plot(rounds, [r["ba"] for r in rows], color="tab:blue", marker=".", label="BA (deployed)")
    ax.plot(rounds, [r["asr"] for r in rows], color="tab:red", marker=".", label="ASR (deployed)")
    if all("clean_to_target" in r for r in rows):  # ASR's floor: what the model sends to the target untriggered
        ax.plot(rounds, [r["clean_to_target"] for r in rows], color="tab:red", ls=":", lw=1,
                label="clean images called the target")
    if any("backbone_ba" in r for r in rows):
        inner = [r for r in rows if "backbone_ba" in r]
        ax.plot([r["round"] for r in inner], [r["backbone_ba"] for r in inner], color="tab:blue", ls="--",
                label="BA (training model)")
        ax.plot([r["round"] for r in inner], [r["backbone_asr"] for r in inner], color="tab:red", ls="--",
                label="ASR (training model)")
    for i, call in enumerate(results.get("defense", [])):
        ax.axvline(call["round"], color="tab:green", lw=1, ls=":", label=f"defense ({call['defense']})" if i == 0
                   else None)
    cfg = results.get("config", {})
    ax.set(xlabel="round", ylabel="accuracy", ylim=(-0.02, 1.02),
           title=title or f"{cfg.get('attack', '?')} attack, {cfg.get('aggregation', '?')}, defense "
                          f"{cfg.get('defense', '?')} (seed {cfg.get('seed', '?')})")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend(loc="center right", fontsize=8)
    return _save(fig, plt, path)


def plot_groups(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str) -> Path:
    """Write `path` (PNG): per group (label -> the results of its runs), mean BA and ASR per round over its runs
    with a band of one standard deviation; ASR on the left, BA on the right."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(FIGSIZE[0] * 1.4, FIGSIZE[1]), dpi=DPI, sharex=True)
    colours = plt.get_cmap("tab10")
    for i, (label, runs) in enumerate(groups.items()):
        length = min(len(r["rounds"]) for r in runs)
        rounds = [row["round"] for row in runs[0]["rounds"][:length]]
        for ax, key in zip(axes, ("asr", "ba"), strict=True):
            values = np.array([[row[key] for row in r["rounds"][:length]] for r in runs])
            mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(length)
            ax.plot(rounds, mean, color=colours(i % 10), label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
            ax.fill_between(rounds, mean - std, mean + std, color=colours(i % 10), alpha=0.15)
    for ax, name in zip(axes, ("ASR", "BA"), strict=True):
        ax.set(xlabel="round", ylabel=name, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(temporary)
    plt.close(fig)
    temporary.replace(path)
    return path
