"""Figures of every attention map of a model: one figure per image, or a gallery grid.

The maps come from :func:`convattn.maps.record_maps` and are read by kind with
:func:`convattn.maps.interpret_maps`: spatial maps are drawn as heat maps upsampled onto
the input image, channel weights as a bar chart, a self-attention query's row on the
image with the query marked (as in the SAGAN paper's figures), other matrices as they are;
spatial transformers' θ is drawn by :mod:`convattn.viz.stn`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..maps import AttentionMap, interpret_maps, record_maps
from ._images import heat_overlay, new_figure, to_display

__all__ = ["attention_figure", "gallery_figure", "plot_attention"]


def _panel_grid(n: int, max_cols: int = 5) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _colour_bar(ax, values: np.ndarray, label: str, cmap: str) -> None:
    """A colour bar beside ``ax`` spanning ``values``' range, labelled with what the value is."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = float(np.min(values)), float(np.max(values))
    bar = ax.figure.colorbar(ScalarMappable(Normalize(lo, hi if hi > lo else lo + 1e-12), cmap=cmap), ax=ax,
                             fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _draw_panel(ax, image: np.ndarray, name: str, payload: Any, *, max_bars: int = 64, fontsize: int = 8,
                colour_bars: bool = False, cam_label: str = "CAM") -> None:
    """Draw one panel: the input (payload None), a CAM (payload an array), or a map (payload (map, index)).

    With ``colour_bars``, heat maps get a colour bar of their values: the attention weight (its
    range in this map), or the CAM (0–1).
    """
    ax.set_title(name if len(name) <= 32 else "…" + name[-31:], fontsize=fontsize)
    H, W = image.shape[:2]
    if payload is None:
        ax.imshow(image, interpolation="nearest")
        ax.axis("off")
        return
    if not isinstance(payload, tuple):
        ax.imshow(heat_overlay(image, payload))
        ax.axis("off")
        if colour_bars:
            _colour_bar(ax, payload, f"{cam_label} (0–1)", "jet")
        return
    m, b = payload
    data = m.data[b]
    if m.kind == "channel":
        vals = data[:max_bars]
        ax.bar(np.arange(len(vals)), vals, width=1.0, color="tab:blue")
        ax.set_xlabel(f"channel (first {len(vals)} of {data.shape[0]})" if len(data) > len(vals) else "channel",
                      fontsize=7)
        ax.set_ylabel("weight", fontsize=7)
        ax.tick_params(labelsize=6)
        return
    if m.kind in ("spatial", "query"):
        ax.imshow(heat_overlay(image, data))
        if m.kind == "query" and m.query is not None:
            gh, gw = m.grid
            qy, qx = m.query
            ax.plot([(qx + 0.5) * W / gw - 0.5], [(qy + 0.5) * H / gh - 0.5], marker="+", color="white",
                    markersize=12, markeredgewidth=2)
        ax.axis("off")
        cmap = "jet"
    else:
        ax.imshow(data, cmap="viridis", interpolation="nearest")
        ax.tick_params(labelsize=6)
        cmap = "viridis"
    if colour_bars:
        _colour_bar(ax, data, "attention weight", cmap)


def gallery_figure(
    images: np.ndarray,
    entries: Sequence[AttentionMap],
    *,
    cams: np.ndarray | None = None,
    max_maps: int = 6,
    title: str | None = None,
):
    """A grid: one row per image (input, Grad-CAM if given, the first ``max_maps`` maps).

    Args:
        images: ``(B, H, W, 3)`` in [0, 1].
        entries: maps from :func:`interpret_maps` (batch index = row).
        cams: ``(B, H, W)`` Grad-CAM maps.
        max_maps: maps shown per row (theta matrices are skipped).
        title: figure title.
    """
    shown = [m for m in entries if m.kind != "theta"][:max_maps]
    cols = 1 + (cams is not None) + len(shown)
    rows = images.shape[0]
    fig = new_figure(2.2 * cols, 2.2 * rows + (0.4 if title else 0))
    for r in range(rows):
        panels: list[tuple[str, Any]] = [("input", None)]
        if cams is not None:
            panels.append(("Grad-CAM", cams[r]))
        panels += [(m.key, (m, r)) for m in shown]
        for c, (name, payload) in enumerate(panels):
            _draw_panel(fig.add_subplot(rows, cols, r * cols + c + 1), images[r], name if r == 0 else "", payload,
                        fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def attention_figure(
    image: np.ndarray,
    entries: Sequence[tuple[AttentionMap, int]],
    *,
    cam: np.ndarray | None = None,
    cam_label: str = "Grad-CAM",
    title: str | None = None,
    max_bars: int = 64,
    max_cols: int = 5,
):
    """One image's figure: the input, a CAM (if given), then one panel per map, wrapped into rows
    of ``max_cols``; heat maps carry a colour bar of their values.

    Args:
        image: ``(H, W, 3)`` in [0, 1] (see :func:`convattn.viz.to_display`).
        entries: ``(map, index into its batch)`` pairs.
        cam: ``(H, W)`` class activation map in [0, 1].
        cam_label: the CAM's panel title and colour-bar label.
        title: figure title.
        max_bars: channel charts show the first this-many channels.
        max_cols: panels per row.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    panels: list[tuple[str, Any]] = [("input", None)]
    if cam is not None:
        panels.append((cam_label, cam))
    panels += [(m.key, (m, b)) for m, b in entries if m.kind != "theta"]
    rows, cols = _panel_grid(len(panels), max_cols)
    fig = new_figure(3.4 * cols, 3.0 * rows + (0.4 * (1 + title.count("\n")) if title else 0))
    for i, (name, payload) in enumerate(panels):
        _draw_panel(fig.add_subplot(rows, cols, i + 1), image, name, payload, max_bars=max_bars, colour_bars=True,
                    cam_label=cam_label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_attention(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    query: tuple[float, float] | None = None,
    cams: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
) -> list:
    """One figure per image with every attention map of ``model`` (and Grad-CAM maps if given).

    Args:
        model: any model containing convattn layers.
        images: normalised ``(B, C, H, W)`` inputs.
        mean, std: the normalisation to undo for display.
        query: self-attention query in input pixels ``(y, x)`` (default: the centre).
        cams: ``(B, H, W)`` Grad-CAM maps (:func:`convattn.viz.grad_cam`).
        titles: a title per image.

    Example:
        >>> import torch, convattn
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), convattn.create_attn("cbam", 16))
        >>> figs = plot_attention(net, torch.randn(2, 3, 12, 12))
        >>> panels = [ax for ax in figs[0].axes if ax.get_label() != "<colorbar>"]   # input, channel, spatial
        >>> len(figs), len(panels), len(figs[0].axes) - len(panels)                   # + the spatial map's colour bar
        (2, 3, 1)
    """
    rec = record_maps(model, images)
    entries = interpret_maps(rec.maps, rec.shapes, image_hw=tuple(images.shape[-2:]), query=query)
    disp = to_display(images, mean, std)
    figs = []
    for b in range(images.shape[0]):
        figs.append(attention_figure(
            disp[b], [(m, b) for m in entries],
            cam=None if cams is None else cams[b],
            title=None if titles is None else titles[b],
        ))
    return figs
