"""``write_compare_page``: one self-contained HTML page for a comparison of variants over seeds.

The page holds the comparison table (as :func:`convattn.experiments.table_cells` words it), every variant's
learning curves overlaid (the mean over seeds with a band from the lowest to the highest seed),
mean test accuracy (± std over seeds) against FLOPs and against seconds per epoch, and a gallery: the same
test images under each variant's attention (:func:`variant_attention`). Images are embedded as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import math
import os
import textwrap
from pathlib import Path
from typing import Any

from ._images import figure_png, heat_overlay, new_figure, to_display
from .curves import read_metrics

__all__ = ["GALLERY_IMAGES", "write_compare_page", "seed_curves", "plot_seed_curves", "plot_accuracy_cost",
           "variant_attention", "plot_gallery"]

#: Test images in the comparison page's gallery, by default.
GALLERY_IMAGES = 6

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


def variant_attention(run_dir: str | os.PathLike, count: int = GALLERY_IMAGES, *, prefer: str | None = None):
    """``(images (N, H, W, 3) in [0, 1], maps (N, H, W), what)``: the first ``count`` test images of a run's data and
    the run's attention on each, in the image's frame: the spatial (or self-attention) map ``prefer`` or else the
    first one it records, its values as the layer gives them; for a model that records none, Grad-CAM (0–1) at its
    automatic layer (:func:`convattn.maps.grad_cam`). A map made behind a spatial transformer is carried back onto
    the input (0 outside its window), as the localisation scores are (:mod:`convattn.eval.localize`)."""
    import torch

    from ..eval.geometry import to_image_frame, upsample_to
    from ..maps import find_cam_layer, grad_cam, interpret_maps, record_maps
    from .run import load_model, sample_images

    model, info, config, _ = load_model(run_dir)
    x, _ = sample_images(config.dataset, count, config=config)
    x = x.float()
    hw = tuple(x.shape[-2:])
    cam_layer = find_cam_layer(model, x)
    rec = record_maps(model, x, watch=[cam_layer])
    spatial = [m for m in interpret_maps(rec.maps, rec.shapes, image_hw=hw, query="mean") if m.kind in ("spatial", "query")]
    chosen = next((m for m in spatial if m.key == prefer), spatial[0] if spatial else None)
    if chosen is not None:
        maps, layer, what = torch.from_numpy(chosen.data), chosen.key.split(":")[0], chosen.key
    else:
        cams, layer = grad_cam(model, x, target_layer=cam_layer)
        maps, what = torch.from_numpy(cams), f"Grad-CAM at {cam_layer} (no attention map)"
    maps = upsample_to(maps, hw)
    frame = rec.frame_of(layer)
    if frame is not None:
        maps = to_image_frame(maps, rec.transformers[frame].theta)
        what += f", carried back through {frame}"
    return to_display(x, info.get("mean"), info.get("std")), maps.numpy(), what


def plot_gallery(rows: list[tuple[str, Any, Any, str]]):
    """One row per variant ``(name, images, maps, what)`` of :func:`variant_attention`: each image with the map
    over it and a colour bar of the map's values."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cols = max(len(images) for _, images, _, _ in rows)
    fig = new_figure(2.3 * cols, 2.3 * len(rows))
    for r, (name, images, maps, what) in enumerate(rows):
        for c in range(len(images)):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(heat_overlay(images[c], maps[c]))
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{name}\n{textwrap.fill(what, 34)}", fontsize=7)
            lo, hi = float(maps[c].min()), float(maps[c].max())
            if hi - lo <= 1e-6 * max(1.0, abs(hi)):  # a constant map: its value, no range
                ax.set_xlabel(f"constant {lo:.3g}", fontsize=6)
                hi = lo + 1.0
            bar = fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap="jet"), ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=5)
    fig.tight_layout()
    return fig


def _gallery(table: dict[str, Any], count: int) -> list[str]:
    """The gallery's HTML: the first finished seed's run of every variant; a variant without one, or whose run
    cannot be drawn, is named with the reason instead."""
    drawn, missing = [], []
    for row in table["rows"]:
        run = next((r for r in row["runs"] if r.get("status", "finished") == "finished" and r.get("run_dir")), None)
        if run is None:
            missing.append(f"{row['variant']}: no finished run")
            continue
        prefer = (row.get("localization") or {}).get("map")
        try:
            drawn.append((row["variant"], *variant_attention(run["run_dir"], count, prefer=prefer)))
        except Exception as exc:  # the page is still written: the table matters more than one picture
            missing.append(f"{row['variant']}: not drawn ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    parts = ["<h2>Attention gallery</h2><p class='muted'>The same test images under each variant's attention "
             "(its first seed's run): the spatial map the table scores, else its first spatial or self-attention "
             "map; for a variant without attention maps, Grad-CAM of its predicted class. Each colour bar spans that "
             "map's values; the overlay stretches them from blue (lowest) to red (highest).</p>"]
    if drawn:
        parts.append(_img(figure_png(plot_gallery(drawn)), "attention gallery"))
    parts += [f"<p class='muted'>{html.escape(m)}</p>" for m in missing]
    return parts


def write_compare_page(table: dict[str, Any], out_path: str | os.PathLike, *, cells: tuple[list[str], list[list[str]]],
                       note: str, title: str = "convattn compare", gallery: int = GALLERY_IMAGES) -> Path:
    """Write the HTML page of a comparison (:func:`convattn.experiments.compare`'s result) atomically;
    ``cells`` (headers, rows) and ``note`` are its table as :func:`convattn.experiments.table_cells` and
    ``table_note`` word it; ``gallery`` test images under each variant's attention (0: no gallery)."""
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
    if gallery:
        parts += _gallery(table, gallery)
    parts.append("</body></html>\n")
    return atomic_write_text(out_path, "\n".join(parts))
