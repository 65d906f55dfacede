"""Attention maps of every convattn layer in a model, as arrays and as figures.

:func:`collect_attention` runs the model under :func:`convattn.record_attention`
and also notes each layer's input shape, so that every recorded tensor can be
read as one of:

- ``"spatial"``: a map over the layer's positions, ``(B, h, w)`` or ``(B, k, h, w)``
  (averaged over ``k``), drawn as a heat map upsampled onto the input image;
- ``"channel"``: one weight per channel ``(B, C)``, drawn as a bar chart;
- ``"query"``: self-attention ``(B, [heads,] Nq, Nk)`` with ``Nq = h·w``: the row of
  one query position (default the centre; heads averaged), reshaped to the key
  grid and drawn on the image with the query marked, as in the SAGAN paper's figures;
- ``"matrix"``: any other 2-D map (a DANet channel-affinity ``C × C`` matrix), drawn as is;
- ``"theta"``: a spatial transformer's ``(B, 2, 3)`` matrix (drawn by :mod:`convattn.viz.stn`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..layers import record_attention
from ..layers._recording import RecordsAttention
from ._images import heat_overlay, new_figure, to_display

__all__ = ["AttentionMap", "collect_attention", "interpret_maps", "query_map", "attention_figure", "gallery_figure", "plot_attention"]


@dataclass
class AttentionMap:
    """One recorded map, read for display.

    Attributes:
        key: ``record_attention`` key (``"layer1.0.attn:spatial"``).
        kind: ``"spatial"``, ``"channel"``, ``"query"``, ``"matrix"`` or ``"theta"``.
        data: ``(B, ...)`` array: ``(B, h, w)`` for spatial / query / matrix,
            ``(B, C)`` for channel, ``(B, 2, 3)`` for theta.
        query: for ``"query"``: the query position ``(y, x)`` on the layer's grid
            (``None`` for the mean over queries).
        grid: for ``"query"``: the layer's query grid ``(h, w)``.
    """

    key: str
    kind: str
    data: np.ndarray
    query: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None


def collect_attention(model: nn.Module, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]], Any]:
    """Run ``model(images)`` (eval mode, no gradients) recording every attention map.

    Returns:
        ``(maps, input_shapes, output)``: the ``record_attention`` dict, the input
        shape of each recording layer by module path, and the model output.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for path, module in model.named_modules():
        if isinstance(module, RecordsAttention):
            name = path or module.__class__.__name__

            def pre_hook(mod, args, _name=name):
                if args and isinstance(args[0], torch.Tensor):
                    shapes[_name] = tuple(args[0].shape)

            hooks.append(module.register_forward_pre_hook(pre_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_attention(model) as maps:
            output = model(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return dict(maps), shapes, output


def _factor(n: int, h: int, w: int) -> tuple[int, int] | None:
    """``(a, b)`` with ``a·b = n`` and ``a/b`` closest to ``h/w`` (a pooled key grid)."""
    if n == h * w:
        return h, w
    best = None
    target = h / max(w, 1)
    for a in range(1, int(math.isqrt(n)) + 1):
        if n % a:
            continue
        for hh, ww in ((a, n // a), (n // a, a)):
            err = abs(math.log(hh / ww) - math.log(target))
            if best is None or err < best[0]:
                best = (err, hh, ww)
    return None if best is None else (best[1], best[2])


def query_map(attn: np.ndarray | torch.Tensor, grid: tuple[int, int], query: tuple[int, int]) -> np.ndarray:
    """The attention row of query ``(y, x)`` on ``grid`` (h, w), reshaped to the key grid.

    ``attn`` is ``(Nq, Nk)`` or ``(heads, Nq, Nk)`` (heads averaged).
    """
    a = torch.as_tensor(np.asarray(attn, dtype=np.float32))
    if a.dim() == 3:
        a = a.mean(0)
    h, w = grid
    y = min(max(int(query[0]), 0), h - 1)
    x = min(max(int(query[1]), 0), w - 1)
    row = a[y * w + x]
    kh, kw = _factor(row.numel(), h, w) or (1, row.numel())
    return row.reshape(kh, kw).numpy()


def _to_grid(query: tuple[float, float] | None, image_hw: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """A query given in input-image pixels (``None``: the centre) -> a cell of the layer's grid."""
    h, w = grid
    if query is None:
        return h // 2, w // 2
    H, W = image_hw
    return min(int(query[0] * h / H), h - 1), min(int(query[1] * w / W), w - 1)


def interpret_maps(
    maps: dict[str, torch.Tensor],
    input_shapes: dict[str, tuple[int, ...]],
    *,
    image_hw: tuple[int, int],
    query: tuple[float, float] | str | None = None,
) -> list[AttentionMap]:
    """Read each recorded tensor as a spatial / channel / query / matrix / theta map (see the module docstring).

    Args:
        maps, input_shapes: from :func:`collect_attention`.
        image_hw: the input images' (H, W) (to place the query).
        query: query position in input-image pixels ``(y, x)``; ``None`` is the centre;
            ``"mean"`` averages the rows of all queries (and heads): how much attention each key
            position receives overall (``AttentionMap.query`` is then ``None``).
    """
    if isinstance(query, str) and query != "mean":
        raise ValueError(f"interpret_maps: query must be (y, x), None or 'mean', got {query!r}")
    out: list[AttentionMap] = []
    for key, t in maps.items():
        t = t.detach().float().cpu()
        layer = key.split(":")[0]
        shape = input_shapes.get(layer)
        hw = tuple(shape[-2:]) if shape is not None and len(shape) == 4 else None
        channels = shape[1] if shape is not None and len(shape) >= 2 else None
        n = hw[0] * hw[1] if hw else None
        B = t.shape[0]
        if t.dim() == 2:
            out.append(AttentionMap(key, "channel", t.numpy()))
        elif t.dim() == 3 and tuple(t.shape[1:]) == (2, 3) and key.endswith("theta"):
            out.append(AttentionMap(key, "theta", t.numpy()))
        elif t.dim() in (3, 4) and n is not None and t.shape[-2] == n and n > 1 and not (
            t.dim() == 4 and tuple(t.shape[-2:]) == hw
        ):
            if isinstance(query, str):  # "mean": the attention every key receives, averaged over queries
                kh, kw = _factor(t.shape[-1], *hw) or (1, t.shape[-1])
                data = t.reshape(B, -1, t.shape[-1]).mean(1).reshape(B, kh, kw).numpy()
                out.append(AttentionMap(key, "query", data, grid=hw))
            else:
                q = _to_grid(query, image_hw, hw)
                data = np.stack([query_map(t[b], hw, q) for b in range(B)])
                out.append(AttentionMap(key, "query", data, query=q, grid=hw))
        elif t.dim() == 4 or (t.dim() == 3 and hw is not None and tuple(t.shape[1:]) == hw):
            m = t if t.dim() == 3 else t.mean(1)
            if channels is not None and t.dim() == 4 and hw is not None and tuple(t.shape[-2:]) != hw \
                    and channels in t.shape[-2:]:
                out.append(AttentionMap(key, "matrix", m.numpy()))  # e.g. a (C, W) branch map
            else:
                out.append(AttentionMap(key, "spatial", m.numpy()))
        elif t.dim() == 3:
            out.append(AttentionMap(key, "matrix", t.numpy()))
        elif t.dim() > 4:
            m = t.reshape(B, -1, *t.shape[-2:]).mean(1)
            out.append(AttentionMap(key, "matrix", m.numpy()))
        # 1-D tensors (B,) carry no map to draw
    return out


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
    maps, shapes, _ = collect_attention(model, images)
    entries = interpret_maps(maps, shapes, image_hw=tuple(images.shape[-2:]), query=query)
    disp = to_display(images, mean, std)
    figs = []
    for b in range(images.shape[0]):
        figs.append(attention_figure(
            disp[b], [(m, b) for m in entries],
            cam=None if cams is None else cams[b],
            title=None if titles is None else titles[b],
        ))
    return figs
