"""Coordinate Attention for Efficient Mobile Network Design (Hou, Zhou, Feng; CVPR 2021). https://arxiv.org/abs/2103.02907"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attn
from ._batchnorm import resolve_norm
from ._helpers import check_channels, check_input, check_odd, check_positive, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["CoordAttention", "SimpleCoordAttention", "StripAttention"]


@register_attn(
    "coord", kind="gate", paper="Coordinate Attention for Efficient Mobile Network Design, Hou et al., CVPR 2021"
)
class CoordAttention(RecordsAttention):
    """Coordinate attention: channel attention factorised into a height and a width direction.

    Eq. 4–9 of the paper: pool along each axis, ``z^h_c(h) = mean_w x_c(h, w)`` and
    ``z^w_c(w) = mean_h x_c(h, w)``; concatenate the two strips and apply one shared
    1×1 convolution, BN and h-swish, ``f = δ(BN(F_1([z^h, z^w])))``; split ``f`` back
    into ``f^h`` and ``f^w``; ``g^h = σ(F_h(f^h))``, ``g^w = σ(F_w(f^w))``;
    ``y_c(i, j) = x_c(i, j) · g^h_c(i) · g^w_c(j)``.

    Widths and biases follow the official code: the shared width is
    ``max(8, C / 32)`` and the 1×1 convolutions have biases. timm's ``CoordAttn``
    computes the same function with other defaults (width ``C/16 · 2/3`` rounded
    to 8, no biases); with equal widths and ``bias=False`` the two agree (tested).

    Args:
        channels: input channels C.
        rd_ratio: reduction ratio of the shared width as a fraction (paper: 1/32).
        rd_channels: shared width, overriding ``rd_ratio`` and ``min_rd_channels``.
        rd_divisor: the shared width is rounded to a multiple of this.
        min_rd_channels: floor of the shared width (official code: 8).
        bias: whether the 1×1 convolutions have biases.
        act_layer: the non-linearity δ (official code: h-swish).
        norm_layer: the norm after ``F_1`` (batch norm).
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``"height"`` ``(B, C, H, 1)`` and
        ``"width"`` ``(B, C, 1, W)``, the two gates.

    Example:
        >>> import torch
        >>> ca = CoordAttention(64)
        >>> ca(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 32,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        min_rd_channels: int = 8,
        bias: bool = True,
        act_layer: str | type[nn.Module] = "hard_swish",
        norm_layer: str | type[nn.Module] = "batchnorm",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        if rd_channels is None:
            check_positive(name, "min_rd_channels", min_rd_channels)
            rd = max(reduced_channels(name, channels, rd_ratio, None, rd_divisor), int(min_rd_channels))
        else:
            rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        self.conv1 = nn.Conv2d(channels, rd, 1, bias=bias)
        self.bn1 = resolve_norm(get_layer(norm_layer, owner=name, arg="norm_layer"))(rd)
        self.act = get_layer(act_layer, owner=name, arg="act_layer")()
        self.conv_h = nn.Conv2d(rd, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(rd, channels, 1, bias=bias)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in (self.conv1, self.bn1, self.conv_h, self.conv_w):
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        h, w = x.shape[-2:]
        z_h = x.mean(3, keepdim=True)  # (B, C, H, 1)
        z_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        f = self.act(self.bn1(self.conv1(torch.cat([z_h, z_w], dim=2))))
        f_h, f_w = torch.split(f, [h, w], dim=2)
        g_h = self.gate(self.conv_h(f_h))  # (B, C, H, 1)
        g_w = self.gate(self.conv_w(f_w)).transpose(2, 3)  # (B, C, 1, W)
        if self.recording:
            self.emit("height", g_h)
            self.emit("width", g_w)
        return x * g_h * g_w


@register_attn(
    "scoord",
    kind="gate",
    paper="Coordinate Attention for Efficient Mobile Network Design, Hou et al., CVPR 2021 "
    "(timm's simplified variant 'scoord', not in the paper)",
)
class SimpleCoordAttention(RecordsAttention):
    """timm's simplified coordinate attention (``scoord``): ``x · σ(a^h + a^w)``.

    The strips ``z^h = mean_w x`` and ``z^w = mean_h x`` go through one shared linear
    layer ``C -> rd`` and an activation (no norm), then separate linear layers
    ``rd -> C`` give ``a^h`` ``(B, C, H, 1)`` and ``a^w`` ``(B, C, 1, W)``, which are
    *added* before one gate (the paper multiplies two gates). Same as timm's
    ``SimpleCoordAttn``; ``rd_ratio = 1/6`` is timm's ``0.25 · 2/3``.

    Args:
        channels: input channels C.
        rd_ratio: shared width as a fraction of C.
        rd_channels: shared width, overriding ``rd_ratio``.
        rd_divisor: the shared width is rounded to a multiple of this (timm: 8).
        bias: whether the linear layers have biases.
        act_layer: activation after the shared layer (timm: SiLU).
        gate_layer: the gate σ.
        has_skip: add the input to the output (``x + x · σ(·)``).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the gate ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> sca = SimpleCoordAttention(64)
        >>> sca(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 6,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        bias: bool = True,
        act_layer: str | type[nn.Module] = "silu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        has_skip: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Linear(channels, rd, bias=bias)
        self.act = get_layer(act_layer, owner=name, arg="act_layer")()
        self.fc_h = nn.Linear(rd, channels, bias=bias)
        self.fc_w = nn.Linear(rd, channels, bias=bias)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.has_skip = bool(has_skip)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in (self.fc1, self.fc_h, self.fc_w):
            mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        f_h = self.act(self.fc1(x.mean(3).transpose(1, 2)))  # (B, H, rd)
        f_w = self.act(self.fc1(x.mean(2).transpose(1, 2)))  # (B, W, rd)
        a_h = self.fc_h(f_h).transpose(1, 2).unsqueeze(3)  # (B, C, H, 1)
        a_w = self.fc_w(f_w).transpose(1, 2).unsqueeze(2)  # (B, C, 1, W)
        g = self.gate(a_h + a_w)
        if self.recording:
            self.emit("", g)
        out = x * g
        return out + x if self.has_skip else out


@register_attn(
    "strip",
    kind="gate",
    paper="Strip Pooling: Rethinking Spatial Pooling for Scene Parsing, Hou et al., CVPR 2020 "
    "(timm's minimal strip attention 'strip')",
)
class StripAttention(RecordsAttention):
    """timm's minimal strip attention (``strip``): ``x · σ(F_h(z^h) + F_w(z^w))``.

    Strip pooling (Hou et al., CVPR 2020, https://arxiv.org/abs/2003.13328) reduced
    to a gate: ``z^h = mean_w x`` ``(B, C, H, 1)`` and ``z^w = mean_h x``
    ``(B, C, 1, W)``, each refined by a depthwise ``k×1`` / ``1×k`` convolution
    (``use_conv``; identity otherwise, which makes the layer parameter-free), summed
    with broadcasting and gated. Same as timm's ``StripAttn``.

    Args:
        channels: input channels C.
        use_conv: refine the strips with depthwise convolutions.
        kernel_size: their width k (odd).
        bias: whether they have biases.
        gate_layer: the gate σ.
        has_skip: add the input to the output.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the gate ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> strip = StripAttention(64)
        >>> strip(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        use_conv: bool = True,
        kernel_size: int = 3,
        bias: bool = False,
        gate_layer: str | type[nn.Module] = "sigmoid",
        has_skip: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_odd(name, "kernel_size", kernel_size)
        p = kernel_size // 2
        if use_conv:
            self.conv_h: nn.Module = nn.Conv2d(channels, channels, (kernel_size, 1), padding=(p, 0),
                                               groups=channels, bias=bias)
            self.conv_w: nn.Module = nn.Conv2d(channels, channels, (1, kernel_size), padding=(0, p),
                                               groups=channels, bias=bias)
        else:
            self.conv_h = nn.Identity()
            self.conv_w = nn.Identity()
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.has_skip = bool(has_skip)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in (self.conv_h, self.conv_w):
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        g = self.gate(self.conv_h(x.mean(3, keepdim=True)) + self.conv_w(x.mean(2, keepdim=True)))
        if self.recording:
            self.emit("", g)
        out = x * g
        return out + x if self.has_skip else out
