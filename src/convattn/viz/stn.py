"""Spatial transformers (Jaderberg et al., NeurIPS 2015; https://arxiv.org/abs/1506.02025) made visible.

For each spatial transformer in a model (a module with ``theta(x)`` and
``sampling_grid(x, theta)``, as convattn's ``stn`` layer has), one recorded forward
pass (:func:`convattn.maps.record_maps`) gives its input, output and θ; the figure
shows, side by side, the input, the sampling grid drawn on it (where each output pixel
is read from), and the output.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..maps import Recording, record_maps
from ._images import new_figure, to_display

__all__ = ["transformer_outputs", "plot_transformer", "plot_transformers", "transformer_figures"]


def transformer_outputs(model: nn.Module, images: torch.Tensor, *, recording: Recording | None = None
                        ) -> list[dict[str, Any]]:
    """Per transformer that ``model(images)`` runs, its ``input``, ``grid`` ``(B, H', W', 2)``,
    ``theta`` ``(B, 2, 3)`` and ``output`` tensors (``path`` names it).

    ``recording``: a :func:`convattn.maps.record_maps` pass of these images to read instead of a new one.
    """
    rec = recording if recording is not None else record_maps(model, images)
    results = []
    with torch.no_grad():
        for t in rec.transformers.values():
            grid = t.module.sampling_grid(t.input, t.theta)
            results.append({"path": t.path, "input": t.input, "grid": grid, "theta": t.theta, "output": t.output})
    return results


def _grid_pixels(grid: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ``[-1, 1]`` source coordinates -> input pixel coordinates (``align_corners=False``)."""
    px = ((grid[..., 0] + 1) * W - 1) / 2
    py = ((grid[..., 1] + 1) * H - 1) / 2
    return px, py


def plot_transformer(
    image: np.ndarray, grid: np.ndarray, output: np.ndarray, *, lines: int = 8, title: str | None = None, axes=None
):
    """Input, sampling grid on the input, and output, side by side.

    Args:
        image: ``(H, W, 3)`` input in [0, 1].
        grid: ``(H', W', 2)`` sampling grid in normalised coordinates.
        output: ``(H', W', 3)`` transformed image in [0, 1].
        lines: grid lines drawn per direction (plus the output's border).
        title: figure title.
        axes: three matplotlib axes to draw into (a new figure otherwise).

    Returns:
        the figure.
    """
    if axes is None:
        fig = new_figure(9, 3.2)
        axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    else:
        fig = axes[0].figure
    H, W = image.shape[:2]
    h, w = grid.shape[:2]
    px, py = _grid_pixels(grid, H, W)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(image, interpolation="nearest")
    rows = np.unique(np.linspace(0, h - 1, min(lines, h)).round().astype(int))
    cols = np.unique(np.linspace(0, w - 1, min(lines, w)).round().astype(int))
    for r in rows:
        axes[1].plot(px[r], py[r], color="yellow", linewidth=0.8)
    for c in cols:
        axes[1].plot(px[:, c], py[:, c], color="yellow", linewidth=0.8)
    border_x = np.concatenate([px[0], px[:, -1], px[-1, ::-1], px[::-1, 0]])
    border_y = np.concatenate([py[0], py[:, -1], py[-1, ::-1], py[::-1, 0]])
    axes[1].plot(border_x, border_y, color="red", linewidth=1.2)
    axes[1].set_xlim(-0.5, W - 0.5)
    axes[1].set_ylim(H - 0.5, -0.5)
    axes[1].set_title("sampling grid", fontsize=8)
    axes[2].imshow(output, interpolation="nearest")
    axes[2].set_title("transformed", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_transformers(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_rows: int = 8,
) -> list:
    """One figure per spatial transformer: a row (input, grid, output) per image, at most ``max_rows``.

    Inputs that are the model's images are shown un-normalised with ``mean``/``std``;
    a transformer deeper in the network shows its feature maps (channels averaged).

    Example:
        >>> import torch, convattn
        >>> net = torch.nn.Sequential(convattn.create_attn("stn", 3), torch.nn.Conv2d(3, 4, 3))
        >>> figs = plot_transformers(net, torch.randn(2, 3, 16, 16))
        >>> len(figs), len(figs[0].axes)
        (1, 6)
    """
    return [fig for _, fig in transformer_figures(model, images, mean=mean, std=std, max_rows=max_rows)]


def transformer_figures(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_rows: int = 8,
    recording: Recording | None = None,
) -> list[tuple[str, Any]]:
    """Like :func:`plot_transformers`, as ``(module path, figure)`` pairs (``recording``: see
    :func:`transformer_outputs`)."""
    figs = []
    for rec in transformer_outputs(model, images, recording=recording):
        x, y, grid = rec["input"], rec["output"], rec["grid"].cpu().numpy()
        is_image = x.shape == images.shape and torch.equal(x, images)
        if is_image:
            inp, out = to_display(x, mean, std), to_display(y, mean, std)
        else:
            inp, out = to_display(x.mean(1, keepdim=True)), to_display(y.mean(1, keepdim=True))
        n = min(max_rows, x.shape[0])
        fig = new_figure(9, 3.0 * n + 0.4)
        for b in range(n):
            axes = [fig.add_subplot(n, 3, 3 * b + i + 1) for i in range(3)]
            plot_transformer(inp[b], grid[b], out[b], axes=axes)
        fig.suptitle(f"spatial transformer {rec['path']}", fontsize=10)
        fig.tight_layout()
        figs.append((rec["path"], fig))
    return figs
