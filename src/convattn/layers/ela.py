"""ELA: Efficient Local Attention for Deep Convolutional Neural Networks (Xu & Wan, 2024). https://arxiv.org/abs/2403.01123"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, check_odd, get_layer
from ._recording import RecordsAttention

__all__ = ["EfficientLocalAttention"]


class _StripGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also takes one value per group (a 1×1 input gives strips of length 1):
    it normalises to 0, so the output is the bias. ``F.group_norm`` refuses that input in every
    mode with a "when training" error; ``torch.group_norm`` computes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


@register_attn(
    "ela",
    kind="gate",
    paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks, Xu & Wan, arXiv 2024",
)
class EfficientLocalAttention(RecordsAttention):
    """Efficient local attention: coordinate attention without the channel bottleneck.

    Strip-pool along each axis, ``z^h = mean_w x`` ``(B, C, H)`` and
    ``z^w = mean_h x`` ``(B, C, W)``; filter each strip with one depthwise 1-D
    convolution of width k and group norm, both shared by the two directions;
    ``y^h = σ(GN(F(z^h)))``, ``y^w = σ(GN(F(z^w)))``; ``out = x · y^h · y^w``.
    No channel reduction, so no information is lost in a bottleneck (the paper's
    argument against coordinate attention's BN + reduction).

    Defaults follow the authors' reference code (ELA-B/L setting): k = 7, 16
    groups. timm's ``EfficientLocalAttn`` is a different reading: separate convolutions
    and norms per direction, group norm with one group, and a SiLU before the gate;
    with those three choices set to this layer's, the two agree (tested).

    Args:
        channels: input channels C.
        kernel_size: width k of the depthwise 1-D convolution (odd; paper: 5 or 7).
        num_groups: groups of the group norm; ``None`` uses 16, reduced to
            ``gcd(16, C)`` so any width works.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``, any B (0 included) and any H, W ≥ 1, in either mode:
        a strip of one value per group is normalised to 0. Records ``"height"`` ``(B, C, H, 1)`` and
        ``"width"`` ``(B, C, 1, W)``.

    Example:
        >>> import torch
        >>> ela = EfficientLocalAttention(64)
        >>> ela(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        num_groups: int | None = None,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_odd(name, "kernel_size", kernel_size)
        if num_groups is None:
            num_groups = math.gcd(16, channels)
        elif isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
            raise ConfigError(f"{name} expects num_groups to divide channels={channels}, got {num_groups!r}")
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)
        self.gn = _StripGroupNorm(num_groups, channels)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.gn.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        z_h, z_w = x.mean(3), x.mean(2)  # (B, C, H), (B, C, W); the conv and norm are shared
        y_h = self.gate(self.gn(self.conv(z_h)))
        y_w = self.gate(self.gn(self.conv(z_w)))
        y_h, y_w = y_h.unsqueeze(3), y_w.unsqueeze(2)
        if self.recording:
            self.emit("height", y_h)
            self.emit("width", y_w)
        return x * y_h * y_w
