"""Reading recorded attention tensors: which kind of map each one is.

Each tensor :func:`convattn.maps.record_maps` recorded is read, with its layer's input
shape, as one of:

- ``"spatial"``: a map over the layer's positions, ``(B, h, w)`` or ``(B, k, h, w)``
  (averaged over ``k``);
- ``"channel"``: one weight per channel ``(B, C)``;
- ``"query"``: self-attention ``(B, [heads,] Nq, Nk)`` with ``Nq = h·w``: the row of
  one query position (default the centre; heads averaged) reshaped to the key grid, as in
  the SAGAN paper's figures, or the mean over queries (the attention each key receives);
- ``"matrix"``: any other 2-D map (a DANet channel-affinity ``C × C`` matrix);
- ``"theta"``: a spatial transformer's ``(B, 2, 3)`` matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AttentionMap", "interpret_maps", "query_map"]


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
        maps, input_shapes: :attr:`Recording.maps` and :attr:`Recording.shapes` (:func:`record_maps`).
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
