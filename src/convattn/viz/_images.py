"""Image plumbing shared by the viz modules: normalised tensors <-> displayable arrays, figures -> PNG."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._io import atomic_write_bytes
from ..exceptions import ConfigError, DatasetNotFoundError

__all__ = ["new_figure", "to_display", "upsample", "heat_overlay", "save_figure", "figure_png", "load_images"]


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, outside pyplot (no global state, works headless and in notebooks)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def to_display(images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Normalised ``(B, C, H, W)`` images -> ``(B, H, W, 3)`` floats in ``[0, 1]``.

    Undoes ``(x - mean) / std`` when given; otherwise rescales each image to its
    own min-max. One channel is repeated to grey; more than three keep the first three.
    """
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if mean is not None and std is not None:
        m = torch.tensor(list(mean), dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(list(std), dtype=x.dtype).view(1, -1, 1, 1)
        if m.shape[1] == x.shape[1]:
            x = x * s + m
        else:
            mean = None
    if mean is None or std is None:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 2:
        x = torch.cat([x, x[:, :1]], 1)
    else:
        x = x[:, :3]
    return x.permute(0, 2, 3, 1).numpy()


def upsample(heat: np.ndarray | torch.Tensor, size: tuple[int, int], normalize: bool = True) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` (H, W), then min-max to ``[0, 1]`` when ``normalize``."""
    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    if normalize:
        t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)
    return t.numpy()


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (any size, upsampled to the image) over an ``(H, W, 3)`` image; returns ``(H, W, 3)`` in [0, 1]."""
    import matplotlib

    h = upsample(heat, image.shape[:2])
    colored = matplotlib.colormaps[cmap](h)[..., :3]
    return np.clip((1 - alpha) * image + alpha * colored, 0, 1)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure as PNG atomically (temporary file + rename)."""
    return atomic_write_bytes(path, figure_png(fig, dpi))


def load_images(
    paths: Sequence[str | os.PathLike],
    *,
    in_chans: int,
    image_size: tuple[int, int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> torch.Tensor:
    """Read image files into a normalised ``(B, in_chans, H, W)`` batch (resized to ``image_size`` if given).

    16-bit images are scaled by 65535, float images taken as 0–1 values (:mod:`convattn.data.images`).
    """
    from ..data.images import read_image

    if not paths:
        raise ConfigError("viz: --images was given no files")
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DatasetNotFoundError(f"viz: image file {str(p)!r} does not exist")
        try:
            t = read_image(p, 1 if in_chans == 1 else 3, None if image_size is None else tuple(image_size))
        except ConfigError as exc:
            raise ConfigError(f"viz: {exc}") from None
        if in_chans not in (1, 3):
            t = t[:1].expand(in_chans, -1, -1) if t.shape[0] == 1 else t.mean(0, keepdim=True).expand(in_chans, -1, -1)
        out.append(t)
    sizes = {tuple(t.shape[-2:]) for t in out}
    if len(sizes) > 1:
        raise ConfigError(f"viz: the images have different sizes {sorted(sizes)}; give the model's image size")
    x = torch.stack(out)
    if mean is not None and std is not None:
        m = torch.tensor(list(mean)).view(1, -1, 1, 1)
        s = torch.tensor(list(std)).view(1, -1, 1, 1)
        x = (x - m) / s
    return x.contiguous()
