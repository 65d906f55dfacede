"""Distorted digits as in "Spatial Transformer Networks" (Jaderberg et al., NeurIPS 2015, arXiv:1506.02025).

Section 4.1 of the paper trains on MNIST under four distortions; :class:`Distortion`
reproduces them for any grayscale dataset (``build_dataset(..., distort=...)``):

* ``"rotate"`` (R): rotation by an angle drawn uniformly from [-90°, 90°].
* ``"rts"`` (RTS): rotation in [-45°, 45°], scale in [0.7, 1.2], and a random
  translation of the result inside a canvas 1.5 times the image side (42×42 for
  28×28 MNIST).
* ``"projective"`` (P): scale in [0.75, 1.0], then each corner moved by a zero-mean
  Gaussian offset (standard deviation 5/28 of the side, 5 px on MNIST): a random
  perspective warp.
* ``"elastic"`` (E): Simard-style elastic warping, a uniform random displacement
  field smoothed by a Gaussian (sigma 4/28 of the side) and scaled by 34/28 of the
  side (alpha 34, sigma 4 on MNIST) - destructive on purpose.

The parameters of image ``index`` come from a generator seeded by
``(seed, split, index)``, so a dataset is the same every epoch and every run with
the same seed, and differs between splits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..exceptions import ConfigError
from ._base import split_seed

__all__ = ["DISTORTIONS", "Distortion", "place_theta", "distorted_size"]

DISTORTIONS = ("rotate", "rts", "projective", "elastic")


def place_theta(
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    center: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
) -> torch.Tensor:
    """``affine_grid`` matrices that paint an ``in_hw`` image into an ``out_hw`` canvas.

    The image is scaled by ``scale`` (output pixels per input pixel), rotated by
    ``angle`` (radians, counter-clockwise on screen) and centred on ``center``
    (``(x, y)`` in output pixels). Use with ``align_corners=False``.

    Args:
        in_hw: ``(H, W)`` of the source image.
        out_hw: ``(H, W)`` of the canvas.
        center: ``(N, 2)`` centres in canvas pixels.
        scale: ``(N,)`` scale factors.
        angle: ``(N,)`` angles in radians.

    Returns:
        ``(N, 2, 3)`` matrices mapping canvas coordinates to source coordinates.
    """
    hi, wi = in_hw
    ho, wo = out_hw
    cos, sin = torch.cos(angle), torch.sin(angle)
    # canvas offset -> source offset: rotate by +angle in (x, y) pixel units with y pointing down, which turns
    # the painted image counter-clockwise on screen
    rinv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (N, 2, 2)
    d = torch.tensor([wo / 2.0, ho / 2.0], dtype=center.dtype)
    lin = rinv * d.view(1, 1, 2)  # R^-1 @ diag(wo/2, ho/2)
    off = torch.einsum("nij,nj->ni", rinv, d.view(1, 2) - center)
    norm = torch.stack([2.0 / (scale * wi), 2.0 / (scale * hi)], -1).unsqueeze(-1)  # (N, 2, 1)
    return torch.cat([lin, off.unsqueeze(-1)], -1) * norm


def distorted_size(kind: str | None, size: tuple[int, int]) -> tuple[int, int]:
    """Image size after distortion ``kind`` (only ``"rts"`` enlarges the canvas, by 1.5)."""
    if kind == "rts":
        return (int(round(1.5 * size[0])), int(round(1.5 * size[1])))
    return size


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """3×3 matrix ``H`` with ``H @ (src, 1) ~ (dst, 1)`` for four point pairs (DLT)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist()):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rhs.append(u)
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.append(v)
    a = torch.tensor(rows, dtype=torch.float64)
    b = torch.tensor(rhs, dtype=torch.float64)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, h.new_ones(1)]).view(3, 3)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class Distortion:
    """One of the spatial-transformer paper's distortions, deterministic per image index.

    Args:
        kind: ``"rotate"``, ``"rts"``, ``"projective"`` or ``"elastic"``.
        size: ``(H, W)`` of the input images.
        seed: dataset seed.
        split: ``"train"``, ``"val"`` or ``"test"`` (each split gets its own draws).

    Call it as ``distortion(x, index)`` on a float image ``(C, H, W)`` in ``[0, 1]``;
    it returns ``(C, *distorted_size(kind, size))``.

    Example:
        >>> d = Distortion("rts", (28, 28), seed=0, split="train")
        >>> d(torch.rand(1, 28, 28), 3).shape
        torch.Size([1, 42, 42])
    """

    def __init__(self, kind: str, size: tuple[int, int], *, seed: int = 0, split: str = "train") -> None:
        if kind not in DISTORTIONS:
            raise ConfigError(f"distort must be one of {', '.join(DISTORTIONS)} or None, got {kind!r}")
        self.kind = kind
        self.size = (int(size[0]), int(size[1]))
        self.out_size = distorted_size(kind, self.size)
        self.base_seed = split_seed(seed, split, salt=1 + DISTORTIONS.index(kind))

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.base_seed + 1_000_003 * int(index)) % (2**63 - 1))

    def grid(self, index: int) -> torch.Tensor:
        """The ``(1, H_out, W_out, 2)`` sampling grid for image ``index`` (``align_corners=False``)."""
        g = self.generator(index)
        h, w = self.size
        ho, wo = self.out_size

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(1, generator=g)

        if self.kind == "rotate":
            angle = uniform(-math.pi / 2, math.pi / 2)
            theta = place_theta(self.size, self.size, torch.tensor([[w / 2.0, h / 2.0]]), torch.ones(1), angle)
            return F.affine_grid(theta, [1, 1, h, w], align_corners=False)
        if self.kind == "rts":
            angle = uniform(-math.pi / 4, math.pi / 4)
            scale = uniform(0.7, 1.2)
            # keep the scaled image's box inside the canvas
            free = torch.stack([(wo - scale * w).clamp(min=0), (ho - scale * h).clamp(min=0)], -1)  # (1, 2)
            center = torch.stack([scale * w / 2, scale * h / 2], -1) + torch.rand(1, 2, generator=g) * free
            theta = place_theta(self.size, self.out_size, center, scale, angle)
            return F.affine_grid(theta, [1, 1, ho, wo], align_corners=False)
        if self.kind == "projective":
            scale = float(uniform(0.75, 1.0))
            corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
            std = torch.tensor([2 * 5 / 28, 2 * 5 / 28], dtype=torch.float64)  # 5 px of 28, in [-1, 1] units
            moved = corners * scale + torch.randn(4, 2, generator=g).double() * std
            hmat = _homography(moved, corners)  # output (canvas) -> input (image)
            ys = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1
            xs = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            pts = torch.stack([xx, yy, torch.ones_like(xx)], -1) @ hmat.T
            den = pts[..., 2:]
            den = torch.where(den.abs() < 1e-6, torch.full_like(den, 1e-6), den)
            return (pts[..., :2] / den).float().unsqueeze(0)
        # elastic (Simard et al. 2003): smoothed uniform displacement field, in pixels
        side = float(min(h, w))
        sigma, alpha = 4.0 * side / 28.0, 34.0 * side / 28.0
        disp = torch.rand(1, 2, h, w, generator=g) * 2 - 1
        k = _gaussian_kernel(sigma)
        r = k.numel() // 2
        disp = F.conv2d(disp.reshape(2, 1, h, w), k.view(1, 1, -1, 1), padding=(r, 0))
        disp = F.conv2d(disp, k.view(1, 1, 1, -1), padding=(0, r)).reshape(1, 2, h, w) * alpha
        ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
        xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        gx = xx + disp[0, 0] * 2 / w
        gy = yy + disp[0, 1] * 2 / h
        return torch.stack([gx, gy], -1).unsqueeze(0)

    def __call__(self, x: torch.Tensor, index: int) -> torch.Tensor:
        grid = self.grid(index).to(x.dtype)
        out = F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out[0].clamp_(0, 1)

    def __repr__(self) -> str:
        return f"Distortion({self.kind!r}, size={self.size})"
