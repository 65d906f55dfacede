"""``write_compare_page``: one self-contained HTML page for a comparison of variants over seeds.

The page holds the comparison table (as :func:`convattn.experiments.table_cells` words it), every variant's
learning curves overlaid (the mean over seeds with a band from the lowest to the highest seed), and
mean test accuracy (± std over seeds) against FLOPs and against seconds per epoch. Images are
embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any

from ._images import figure_png, new_figure
from .curves import read_metrics

__all__ = ["write_compare_page", "seed_curves", "plot_seed_curves", "plot_accuracy_cost"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem}th,td{padding:.3rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;height:auto}.muted{color:#777;font-size:.85rem}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def seed_curves(run_dirs: list[str | os.PathLike], key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(epochs, mean, lowest, highest)`` of metric ``key`` over the runs' ``metrics.jsonl``, at the epochs
    every run that logged the metric has reached."""
    per_run = [{r.get("epoch", i + 1): r[key] for i, r in enumerate(read_metrics(d)) if _finite(r.get(key))}
               for d in run_dirs]
    per_run = [c for c in per_run if c]
    if not per_run:
        return [], [], [], []
    epochs = sorted(set.intersection(*(set(c) for c in per_run)))
    values = [[c[e] for c in per_run] for e in epochs]
    return epochs, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_seed_curves(table: dict[str, Any], keys: tuple[str, ...] = ("train_loss", "val_acc")):
    """One axis per metric in ``keys``: each variant's mean over seeds, with a band from the lowest to the highest."""
    fig = new_figure(5 * len(keys), 3.6)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for row in table["rows"]:
            epochs, mean, low, high = seed_curves([r["run_dir"] for r in row["runs"] if r.get("run_dir")], key)
            if not epochs:
                continue
            (line,) = ax.plot(epochs, mean, marker="o" if len(epochs) < 30 else None, markersize=3, label=row["variant"])
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_accuracy_cost(table: dict[str, Any]):
    """Mean test accuracy (error bars: std over seeds) against FLOPs per image and against seconds per epoch;
    ``None`` when no variant has an accuracy."""
    rows = [r for r in table["rows"] if r["test_acc"]["mean"] is not None]
    if not rows:
        return None
    fig = new_figure(10, 3.6)
    for i, (key, label, log) in enumerate((("flops", "FLOPs per image (log)", True), ("epoch_time", "s / epoch", False))):
        ax = fig.add_subplot(1, 2, i + 1)
        for r in rows:
            if not _finite(r[key]):
                continue
            ax.errorbar([r[key]], [r["test_acc"]["mean"]], yerr=[r["test_acc"]["std"] or 0.0], fmt="o", capsize=3)
            ax.annotate(r["variant"], (r[key], r["test_acc"]["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if log and ax.lines:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_compare_page(table: dict[str, Any], out_path: str | os.PathLike, *, cells: tuple[list[str], list[list[str]]],
                       note: str, title: str = "convattn compare") -> Path:
    """Write the HTML page of a comparison (:func:`convattn.experiments.compare`'s result) atomically;
    ``cells`` (headers, rows) and ``note`` are its table as :func:`convattn.experiments.table_cells` and
    ``table_note`` word it."""
    from .._io import atomic_write_text

    headers, body = cells
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='muted'>{html.escape(note)}</p>",
             "<h2>Variants</h2><table id='compare'><thead><tr>"
             + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    parts += ["<tr class='variant'>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
    parts.append("</tbody></table>")
    parts.append("<h2>Learning curves</h2><p class='muted'>Mean over seeds; the band spans the lowest and highest "
                 "seed.</p>")
    parts.append(_img(figure_png(plot_seed_curves(table)), "learning curves"))
    cost = plot_accuracy_cost(table)
    parts.append("<h2>Accuracy against cost</h2>")
    parts.append(_img(figure_png(cost), "accuracy against cost") if cost else "<p class='muted'>no accuracy yet</p>")
    parts.append("</body></html>\n")
    return atomic_write_text(out_path, "\n".join(parts))
