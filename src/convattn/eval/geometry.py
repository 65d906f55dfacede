"""Box and window geometry on an image: pixel masks, distances, frames, sampling windows, polygon clipping.

Conventions:

- A box is ``(x0, y0, x1, y1)`` in pixel edges of the image (pixel ``(i, j)`` covers
  ``[j, j + 1] × [i, i + 1]``); a pixel is inside when its centre ``(j + ½, i + ½)`` is.
- A map over a layer's ``h × w`` positions is upsampled to the image (bilinear,
  ``align_corners=False``, as the figures draw it). A map computed after a spatial
  transformer (Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015) lives in
  the transformer's output frame; :func:`to_image_frame` carries it back through the
  inverse of θ (zero outside the sampling window).
- The **sampling window** of a spatial transformer is the image region its output grid
  covers: the parallelogram θ maps the output frame ``[-1, 1]²`` onto.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..exceptions import ConfigError

__all__ = [
    "box_distance",
    "box_mask",
    "box_share",
    "check_boxes",
    "clip_polygon",
    "polygon_area",
    "to_image_frame",
    "upsample_to",
    "window_corners",
]


def check_boxes(boxes: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """``boxes`` as float64 ``(batch, 4)``; ``ConfigError`` naming ``what`` for any other shape."""
    boxes = torch.as_tensor(boxes)
    if boxes.shape != (batch, 4):
        raise ConfigError(f"{what}: expected boxes of shape ({batch}, 4), got {tuple(boxes.shape)}")
    return boxes.to(torch.float64)


def _centres(hw: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = hw
    cy = torch.arange(h, device=device, dtype=torch.float64).add_(0.5).view(1, h, 1)
    cx = torch.arange(w, device=device, dtype=torch.float64).add_(0.5).view(1, 1, w)
    return cy, cx


def box_distance(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` Euclidean distance of each pixel centre to each box (0 inside)."""
    cy, cx = _centres(hw, boxes.device)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    dx = (x0 - cx).clamp_min(0) + (cx - x1).clamp_min(0)
    dy = (y0 - cy).clamp_min(0) + (cy - y1).clamp_min(0)
    return torch.hypot(dx, dy)


def box_mask(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` bool: the pixels whose centre lies inside each ``(x0, y0, x1, y1)`` box."""
    boxes = torch.as_tensor(boxes).to(torch.float64)
    return box_distance(boxes, hw) == 0


def box_share(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B,)`` share of the image's pixels inside each box: what a uniform map scores on energy in box."""
    return box_mask(boxes, hw).flatten(1).double().mean(1)


def upsample_to(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)``, bilinear with ``align_corners=False``."""
    maps = torch.as_tensor(maps).float()
    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    return F.interpolate(maps[:, None], size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]


def to_image_frame(maps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Carry ``(B, H, W)`` maps drawn in a spatial transformer's output frame back onto its input image.

    The output frame's normalised point ``t`` was read from the input at ``θ (t, 1)ᵀ``, so
    the input pixel at ``s`` takes the map's value at ``A⁻¹ (s − b)`` (``θ = [A | b]``),
    bilinearly, and 0 outside the sampling window.
    """
    maps = torch.as_tensor(maps).float()
    theta = torch.as_tensor(theta).to(maps.device, torch.float32)
    a_inv = torch.linalg.pinv(theta[:, :, :2])
    inv = torch.cat([a_inv, -(a_inv @ theta[:, :, 2:])], dim=2)
    grid = F.affine_grid(inv, [maps.shape[0], 1, *maps.shape[-2:]], align_corners=False)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def window_corners(theta: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, 4, 2)`` image-pixel ``(x, y)`` corners of the sampling window of ``θ`` ``(B, 2, 3)``,
    in order around the parallelogram (the output frame's corners ``(-1, -1), (1, -1), (1, 1), (-1, 1)``)."""
    theta = torch.as_tensor(theta).to(torch.float64)
    h, w = hw
    t = theta.new_tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    s = t @ theta.transpose(1, 2)  # (B, 4, 2) normalised source coordinates
    return torch.stack([(s[..., 0] + 1) * w / 2, (s[..., 1] + 1) * h / 2], dim=-1)


def polygon_area(pts: Sequence[tuple[float, float]]) -> float:
    """Area of a simple polygon given by its corners in order (the shoelace formula)."""
    n = len(pts)
    return abs(sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))) / 2


def clip_polygon(poly: list[tuple[float, float]], box: Sequence[float]) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: a convex polygon clipped to an axis-aligned ``(x0, y0, x1, y1)`` box."""
    x0, y0, x1, y1 = box
    edges = ((0, x0, 1.0), (0, x1, -1.0), (1, y0, 1.0), (1, y1, -1.0))  # keep sign * (p[axis] - limit) >= 0
    for axis, limit, sign in edges:
        if not poly:
            break
        out: list[tuple[float, float]] = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            dc, dp = sign * (cur[axis] - limit), sign * (prev[axis] - limit)
            if (dc >= 0) != (dp >= 0):
                f = dp / (dp - dc)
                out.append((prev[0] + f * (cur[0] - prev[0]), prev[1] + f * (cur[1] - prev[1])))
            if dc >= 0:
                out.append(cur)
        poly = out
    return poly
