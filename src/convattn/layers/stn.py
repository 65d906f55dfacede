"""Spatial Transformer Networks (Jaderberg, Simonyan, Zisserman, Kavukcuoglu; NeurIPS 2015).
https://arxiv.org/abs/1506.02025
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_choice, check_input, check_odd, check_positive, get_layer
from ._recording import RecordsAttention

__all__ = ["SpatialTransformer", "TRANSFORMS", "params_to_theta"]

#: Number of regressed parameters per transform and their identity values.
TRANSFORMS: dict[str, tuple[float, ...]] = {
    "affine": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # θ row-major, (2, 3)
    "similarity": (1.0, 0.0, 0.0, 0.0),  # scale s, rotation α (radians), tx, ty
    "attention": (1.0, 0.0, 0.0),  # isotropic scale s, tx, ty
    "translation": (0.0, 0.0),  # tx, ty
}


@register_attn(
    "stn",
    kind="gate",
    paper="Spatial Transformer Networks, Jaderberg et al., NeurIPS 2015",
)
class SpatialTransformer(RecordsAttention):
    """Spatial transformer: localisation network, grid generator and bilinear sampler.

    The localisation network ``f_loc`` (two strided convolutions, adaptive average
    pooling to ``pool_size × pool_size`` so that any H×W works, then a two-layer
    regressor) predicts the transform parameters; the grid generator maps the
    output grid's normalised coordinates ``(x^t, y^t)`` to source coordinates
    ``(x^s, y^s)ᵀ = θ (x^t, y^t, 1)ᵀ`` (Eq. 1, ``F.affine_grid``); the sampler
    interpolates the input bilinearly at those points (Eq. 5, ``F.grid_sample``,
    ``align_corners=False``), each channel alike.

    Transforms (the paper's Sec. 4):

    - ``"affine"``: θ regressed directly (6 parameters);
    - ``"similarity"``: ``s, α, tx, ty`` -> ``[[s cos α, -s sin α, tx], [s sin α, s cos α, ty]]``;
    - ``"attention"``: ``s, tx, ty`` -> ``[[s, 0, tx], [0, s, ty]]`` (the paper's
      attention / crop transform: isotropic scale and translation);
    - ``"translation"``: ``tx, ty`` -> ``[[1, 0, tx], [0, 1, ty]]``.

    The regressor's last layer starts with zero weights and the identity transform
    as its bias, so a fresh transformer returns its input (exactly up to the float
    rounding of the normalised pixel-centre coordinates: ~1e-5 in float32, ~1e-14 in float64).

    Args:
        channels: input channels C.
        transform: one of ``"affine"``, ``"similarity"``, ``"attention"``, ``"translation"``.
        loc_channels: widths of the localisation network's two convolutions.
        loc_kernel_size: odd kernel size of those convolutions (stride 2).
        pool_size: side of the adaptive average pooling before the regressor.
        loc_hidden: width of the regressor's hidden layer.
        act_layer: activation of the localisation network.
        out_size: ``(H', W')`` of the output grid; ``None`` keeps the input size.
        padding_mode: sampler padding outside the input: ``"zeros"`` (the paper),
            ``"border"`` or ``"reflection"``.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)`` (or ``(B, C, H', W')`` with ``out_size``).
        Records θ ``(B, 2, 3)`` under ``"theta"``.

    Example:
        >>> import torch
        >>> stn = SpatialTransformer(16, transform="similarity")
        >>> x = torch.randn(2, 16, 7, 9)
        >>> torch.allclose(stn(x), x, atol=1e-6)  # identity at initialisation
        True
        >>> stn.theta(x).shape, stn.sampling_grid(x).shape
        (torch.Size([2, 2, 3]), torch.Size([2, 7, 9, 2]))
    """

    def __init__(
        self,
        channels: int,
        *,
        transform: str = "affine",
        loc_channels: Sequence[int] = (16, 32),
        loc_kernel_size: int = 5,
        pool_size: int = 3,
        loc_hidden: int = 32,
        act_layer: str | type[nn.Module] = "relu",
        out_size: Sequence[int] | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_choice(name, "transform", transform, list(TRANSFORMS))
        check_choice(name, "padding_mode", padding_mode, ["zeros", "border", "reflection"])
        check_odd(name, "loc_kernel_size", loc_kernel_size)
        check_positive(name, "pool_size", pool_size)
        check_positive(name, "loc_hidden", loc_hidden)
        loc_channels = tuple(loc_channels)
        if len(loc_channels) != 2 or any(
            isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in loc_channels
        ):
            raise ConfigError(f"{name} expects loc_channels to be two positive ints, got {loc_channels!r}")
        if out_size is not None:
            out_size = tuple(out_size)
            if len(out_size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in out_size):
                raise ConfigError(f"{name} expects out_size to be None or (H, W) positive ints, got {out_size!r}")
        self.transform_type = transform
        self.out_size = out_size
        self.padding_mode = padding_mode
        act = get_layer(act_layer, owner=name, arg="act_layer")
        c1, c2 = loc_channels
        pad = loc_kernel_size // 2
        self.loc = nn.Sequential(
            nn.Conv2d(channels, c1, loc_kernel_size, stride=2, padding=pad),
            act(),
            nn.Conv2d(c1, c2, loc_kernel_size, stride=2, padding=pad),
            act(),
            AdaptiveAvgPool2d(pool_size),
            nn.Flatten(1),
            nn.Linear(c2 * pool_size * pool_size, loc_hidden),
            act(),
        )
        self.fc_theta = nn.Linear(loc_hidden, len(TRANSFORMS[transform]))
        self.register_buffer("identity", torch.tensor(TRANSFORMS[transform]), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.loc.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
        nn.init.zeros_(self.fc_theta.weight)
        with torch.no_grad():
            self.fc_theta.bias.copy_(self.identity)

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The affine matrix θ ``(B, 2, 3)`` the localisation network predicts for ``x``."""
        p = self.fc_theta(self.loc(x))
        return params_to_theta(self.transform_type, p)

    def sampling_grid(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Source coordinates ``(B, H', W', 2)`` in ``[-1, 1]`` (x then y), as ``F.grid_sample`` reads them."""
        if theta is None:
            theta = self.theta(x)
        h, w = self.out_size if self.out_size is not None else x.shape[-2:]
        return affine_grid(theta, h, w)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        theta = self.theta(x)
        if self.recording:
            self.emit("theta", theta)
        grid = self.sampling_grid(x, theta)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)


def params_to_theta(transform: str, p: torch.Tensor) -> torch.Tensor:
    """Regressed parameters ``(B, P)`` -> affine matrices ``(B, 2, 3)`` (see ``SpatialTransformer``)."""
    if transform == "affine":
        return p.view(-1, 2, 3)
    zero, one = torch.zeros_like(p[:, 0]), torch.ones_like(p[:, 0])
    if transform == "similarity":
        s, a, tx, ty = p.unbind(1)
        c, si = s * torch.cos(a), s * torch.sin(a)
        rows = (c, -si, tx, si, c, ty)
    elif transform == "attention":
        s, tx, ty = p.unbind(1)
        rows = (s, zero, tx, zero, s, ty)
    elif transform == "translation":
        tx, ty = p.unbind(1)
        rows = (one, zero, tx, zero, one, ty)
    else:
        raise ConfigError(f"unknown transform {transform!r}; expected one of {list(TRANSFORMS)}")
    return torch.stack(rows, dim=1).view(-1, 2, 3)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, height, width), align_corners=False)`` written with plain ops.

    Pixel centres at ``(2i + 1) / n - 1``, mapped through θ: the same numbers as
    ``F.affine_grid``, whose output size is baked in as a constant by ``torch.export``
    (this one keeps H×W dynamic).
    """
    opts = {"dtype": theta.dtype, "device": theta.device}
    xs = (torch.arange(width, **opts) * 2 + 1) / width - 1
    ys = (torch.arange(height, **opts) * 2 + 1) / height - 1
    xs, ys = xs.expand(height, width), ys[:, None].expand(height, width)
    base = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)
    grid = torch.matmul(base.flatten(0, 1), theta.transpose(1, 2))  # (B, H·W, 2)
    return grid.unflatten(1, (height, width))


class AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(size)`` as two matrix products, so that H×W stays dynamic on export.

    Output cell ``i`` averages input rows ``⌊i·H/s⌋ .. ⌈(i+1)·H/s⌉ - 1`` (and the same for
    columns), as ``adaptive_avg_pool2d`` does. The TorchScript ONNX exporter cannot
    export ``adaptive_avg_pool2d`` with a dynamic input size; these products it can.

    Example:
        >>> x = torch.randn(2, 3, 7, 5)
        >>> torch.allclose(AdaptiveAvgPool2d(3)(x), nn.AdaptiveAvgPool2d(3)(x), atol=1e-6)
        True
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    @staticmethod
    def _weights(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
        i = torch.arange(size, device=like.device)
        start = torch.div(i * n, size, rounding_mode="floor")
        end = torch.div((i + 1) * n + size - 1, size, rounding_mode="floor")
        j = torch.arange(n, device=like.device)
        inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)  # (size, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._weights(x.shape[-2], self.size, x)
        cols = self._weights(x.shape[-1], self.size, x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))
