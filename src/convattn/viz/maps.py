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


def _draw_panel(ax, image: np.ndarray, name: str, payload: Any, *, max_bars: int = 64, fontsize: int = 8) -> None:
    """Draw one panel: the input (payload None), Grad-CAM (payload an array), or a map (payload (map, index))."""
    ax.set_title(name if len(name) <= 32 else "…" + name[-31:], fontsize=fontsize)
    H, W = image.shape[:2]
    if payload is None:
        ax.imshow(image, interpolation="nearest")
        ax.axis("off")
        return
    if not isinstance(payload, tuple):
        ax.imshow(heat_overlay(image, payload))
        ax.axis("off")
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
    elif m.kind == "spatial":
        ax.imshow(heat_overlay(image, data))
        ax.axis("off")
    elif m.kind == "query":
        ax.imshow(heat_overlay(image, data))
        if m.query is not None:
            gh, gw = m.grid
            qy, qx = m.query
            ax.plot([(qx + 0.5) * W / gw - 0.5], [(qy + 0.5) * H / gh - 0.5], marker="+", color="white",
                    markersize=12, markeredgewidth=2)
        ax.axis("off")
    else:
        ax.imshow(data, cmap="viridis", interpolation="nearest")
        ax.tick_params(labelsize=6)


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
    title: str | None = None,
    max_bars: int = 64,
):
    """One image's figure: the input, Grad-CAM (if given), then one panel per map.

    Args:
        image: ``(H, W, 3)`` in [0, 1] (see :func:`convattn.viz.to_display`).
        entries: ``(map, index into its batch)`` pairs.
        cam: ``(H, W)`` Grad-CAM in [0, 1].
        title: figure title.
        max_bars: channel charts show the first this-many channels.

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    panels: list[tuple[str, Any]] = [("input", None)]
    if cam is not None:
        panels.append(("Grad-CAM", cam))
    panels += [(m.key, (m, b)) for m, b in entries if m.kind != "theta"]
    rows, cols = _panel_grid(len(panels))
    fig = new_figure(3.0 * cols, 3.0 * rows + (0.4 if title else 0))
    for i, (name, payload) in enumerate(panels):
        _draw_panel(fig.add_subplot(rows, cols, i + 1), image, name, payload, max_bars=max_bars)
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
        >>> len(figs), len(figs[0].axes)
        (2, 3)
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
