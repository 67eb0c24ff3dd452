"""`fl-defense plot DIR [--out FILE]`: the figure of a run folder (its results.json) or of a sweep folder (its
summary.json and the results.json of every finished run in it), written as PNG (default DIR/plot.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fl_defense.errors import ConfigError
from fl_defense.plotting import plot_groups, plot_run


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc}") from None


def _results(path: Path) -> dict[str, Any]:
    results = _read_json(path, "results file")
    if not isinstance(results, dict) or not isinstance(results.get("rounds"), list) or not results["rounds"]:
        raise ConfigError(f"results file {str(path)!r} holds no rounds")
    return results


def sweep_groups(folder: Path, summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The finished runs of a sweep, grouped by their grid values apart from the averaged (`over`) axes."""
    over = set(summary.get("over", ["seed"]))
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in summary.get("runs", []):
        if run.get("status") not in ("done", "cached") or not (folder / run["dir"] / "results.json").is_file():
            continue
        label = ", ".join(f"{k}={v}" for k, v in run["point"].items() if k not in over) or "all runs"
        groups.setdefault(label, []).append(_results(folder / run["dir"] / "results.json"))
    return groups


def plot_folder(folder: Path, out: Path | None = None) -> Path:
    """Plot a run folder or a sweep folder; a folder that is neither is a ConfigError."""
    if (folder / "summary.json").is_file():
        summary = _read_json(folder / "summary.json", "sweep summary")
        groups = sweep_groups(folder, summary) if isinstance(summary, dict) else {}
        if not groups:
            raise ConfigError(f"sweep folder {str(folder)!r} has no finished run to plot")
        return plot_groups(groups, out or folder / "plot.png", f"sweep {folder.name}: mean ± std over "
                           f"{', '.join(summary.get('over', ['seed']))}")
    if (folder / "results.json").is_file():
        return plot_run(_results(folder / "results.json"), out or folder / "plot.png")
    raise ConfigError(f"{str(folder)!r} is neither a run folder (results.json) nor a sweep folder (summary.json)")
