"""Scores of maps and sampling windows against object boxes: pointing game, energy in box, window IoU.

Boxes, pixels and windows follow :mod:`convattn.eval.geometry`'s conventions.

- **Pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016): a hit when the map's maximum lies within ``tolerance`` of the box, the
  tolerance being 15 px of a 224 px image scaled to this image's shorter side. When
  several pixels share the maximum, the score is the share of them that hit, so a
  constant map scores the chance level (the share of pixels within the tolerance).
- **Energy in box**: the share of the map's (non-negative) mass inside the box;
  a uniform map scores the box's share of the image (``box_share``); a map with no
  mass scores like a uniform one.
- **Sampling window** of a spatial transformer: its IoU with the box is exact (convex
  polygon clipping); its energy in box is the share of the window inside the box (the
  window read as a uniform map); it points at its centre.
"""

from __future__ import annotations

import math

import torch

from ..exceptions import ConfigError
from .geometry import box_distance, box_mask, check_boxes, clip_polygon, polygon_area, window_corners

__all__ = ["DEFAULT_TOLERANCE", "energy_in_box", "pointing_game", "window_scores"]

#: The pointing game's tolerance: 15 px on a 224 px image, as a share of the image's shorter side.
DEFAULT_TOLERANCE = 15 / 224


def _check_maps(maps: torch.Tensor, what: str) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() != 3:
        raise ConfigError(f"{what}: expected maps of shape (B, H, W), got {tuple(maps.shape)}")
    return maps.to(torch.float64)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, *, tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """``(B,)`` pointing-game hits of image-sized ``maps`` ``(B, H, W)`` against ``boxes`` ``(B, 4)``.

    Args:
        maps: maps at the image's resolution (NaN counts as 0).
        boxes: ``(x0, y0, x1, y1)`` pixel edges.
        tolerance: how far from the box the maximum may lie, as a share of the shorter image side
            (default 15/224).

    Returns:
        float64 ``(B,)``: 1 for a hit, 0 for a miss; the share of hits among tied maxima.
    """
    maps = _check_maps(maps, "pointing_game").nan_to_num(0.0)
    boxes = check_boxes(boxes, maps.shape[0], "pointing_game")
    hw = tuple(maps.shape[-2:])
    near = box_distance(boxes, hw) <= float(tolerance) * min(hw) + 1e-9
    top = maps == maps.flatten(1).amax(1).view(-1, 1, 1)
    return (top & near).flatten(1).sum(1).double() / top.flatten(1).sum(1).double()


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of each image-sized map's mass inside its box (negative values count as 0).

    A map without mass scores the box's share of the image, as a uniform map does.
    """
    maps = _check_maps(maps, "energy_in_box").nan_to_num(0.0).clamp_min(0)
    boxes = check_boxes(boxes, maps.shape[0], "energy_in_box")
    mask = box_mask(boxes, tuple(maps.shape[-2:]))
    total = maps.flatten(1).sum(1)
    inside = (maps * mask).flatten(1).sum(1)
    uniform = mask.flatten(1).double().mean(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), uniform)


def window_scores(
    theta: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int], *, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, torch.Tensor]:
    """Sampling windows of ``θ`` ``(B, 2, 3)`` against ``boxes`` on an ``hw`` image.

    Returns:
        float64 ``(B,)`` tensors: ``"iou"`` (window ∩ box over window ∪ box, exact),
        ``"energy"`` (share of the window's area inside the box) and ``"pointing"``
        (the window's centre within the tolerance of the box).
    """
    corners = window_corners(theta, hw)
    boxes = check_boxes(boxes, corners.shape[0], "window_scores").cpu()
    iou, energy, point = [], [], []
    tol = float(tolerance) * min(hw) + 1e-9
    for quad, box in zip(corners.cpu().tolist(), boxes.tolist()):
        pts = [tuple(p) for p in quad]
        area_w = polygon_area(pts)
        area_b = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
        inter = polygon_area(clip_polygon(pts, box)) if area_w > 0 else 0.0
        union = area_w + area_b - inter
        iou.append(inter / union if union > 0 else 0.0)
        energy.append(inter / area_w if area_w > 0 else 0.0)
        cx, cy = sum(p[0] for p in pts) / 4, sum(p[1] for p in pts) / 4
        dx = max(box[0] - cx, 0.0, cx - box[2])
        dy = max(box[1] - cy, 0.0, cy - box[3])
        point.append(1.0 if math.hypot(dx, dy) <= tol else 0.0)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in (("iou", iou), ("energy", energy), ("pointing", point))}
