"""Training curves (loss and accuracy per epoch) from a run's ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..exceptions import ConfigError
from ._images import new_figure

__all__ = ["read_metrics", "read_results", "plot_curves"]


def _run_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.parent if p.is_file() else p


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (``path`` = the file, a run directory, or a checkpoint in it).

    Lines that are not JSON objects (a line cut short by an interrupted run) are
    skipped. Missing file -> ``[]``.
    """
    p = Path(path)
    if p.is_dir() or p.suffix != ".jsonl":
        p = _run_dir(p) / "metrics.jsonl"
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """The run's ``results.json`` (final metrics written by ``convattn train``), or ``{}``."""
    p = _run_dir(path) / "results.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_curves(
    runs: Sequence[dict[str, Any]] | Mapping[str, Sequence[dict[str, Any]]] | str | os.PathLike,
    *,
    title: str | None = None,
):
    """Loss and accuracy per epoch: one figure, loss on the left, accuracy on the right.

    Args:
        runs: metric rows of one run, a run directory / ``metrics.jsonl``, or
            ``{label: rows}`` for several runs on the same axes.
        title: figure title.

    Every numeric column whose name contains ``loss`` (``acc``) is drawn on the
    loss (accuracy) axes against ``epoch`` (the row index when there is none).

    Raises:
        ConfigError: no rows.

    Example:
        >>> rows = [{"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}, {"epoch": 2, "train_loss": 0.5, "val_acc": 0.7}]
        >>> len(plot_curves(rows).axes)
        2
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = {Path(runs).name: read_metrics(runs)}
    elif not isinstance(runs, Mapping):
        runs = {"": list(runs)}
    if not any(runs.values()):
        raise ConfigError("plot_curves: no metric rows to draw (is metrics.jsonl empty?)")
    fig = new_figure(10, 3.6)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, rows in runs.items():
        keys: list[str] = []
        for r in rows:
            keys += [k for k, v in r.items() if k not in keys and _finite(v)]
        for key in keys:
            ax = ax_loss if "loss" in key else ax_acc if "acc" in key else None
            if ax is None:
                continue
            pts = [(r.get("epoch", i + 1), r[key]) for i, r in enumerate(rows) if _finite(r.get(key))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            name = f"{label} {key}".strip()
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name,
                    linestyle="--" if key.startswith("train") else "-")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
