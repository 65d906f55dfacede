"""Attention Augmented Convolutional Networks (Bello, Zoph, Vaswani, Shlens, Le; ICCV 2019).
https://arxiv.org/abs/1904.09925
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, check_odd, check_positive
from ._recording import RecordsAttention
from ._relpos import RelPosEmb2d
from .mhsa import self_attention_2d

__all__ = ["AttentionAugmentedConv2d"]


def _depth(layer: str, arg: str, value: int | float, out_channels: int, num_heads: int) -> int:
    """``dk`` / ``dv`` given as an int width or as the paper's fraction κ / υ of ``out_channels``.

    A fraction is rounded to the nearest multiple of ``num_heads`` (at least ``num_heads``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{layer} expects {arg} > 0 (an int width or a fraction of out_channels), got {value!r}")
    if isinstance(value, float):
        if value > 1:
            raise ConfigError(f"{layer} expects a fractional {arg} in (0, 1], got {value!r}")
        return max(num_heads, int(round(value * out_channels / num_heads)) * num_heads)
    if value % num_heads:
        raise ConfigError(f"{layer} expects {arg} divisible by num_heads={num_heads}, got {arg}={value}")
    return value


@register_attn(
    "aa_conv",
    kind="conv",
    paper="Attention Augmented Convolutional Networks, Bello et al., ICCV 2019",
)
class AttentionAugmentedConv2d(RecordsAttention):
    """Attention-augmented convolution: ``AAConv(X) = Concat[Conv(X), MHA(X)]`` (Eq. 5).

    A k×k convolution gives ``out_channels - dv`` channels; multi-head self-attention
    over all positions gives ``dv`` channels: ``Q, K, V`` from one 1×1 convolution
    (``2·dk + dv`` channels), per head ``softmax((Q Kᵀ + S^H + S^W) / √(dk/Nh)) V``
    with 2-D relative logits ``S`` (Eq. 3–4), heads concatenated and mixed by a 1×1
    convolution ``W^O`` (Eq. 2). ``dv == out_channels`` gives the paper's fully
    attentional layer (no convolution).

    Stride: with ``stride > 1`` the Q/K/V 1×1 convolution is strided too, so attention
    runs over the subsampled positions and its output matches the strided
    convolution's ``ceil(H / stride) × ceil(W / stride)``, as in the common
    implementations of the paper (its own code shows only stride 1).

    Relative embeddings are parameterised for offsets up to ``max_size - 1`` and
    clipped beyond (see ``MultiHeadSelfAttention2d``). The default path is fused
    scaled-dot-product attention with the relative logits folded into the queries
    and keys (memory O(N·(dk/Nh + H + W)), no N×N matrix); inside
    ``convattn.record_attention`` the explicit path records ``(B, Nh, N, N)``.

    Args:
        channels: input channels.
        out_channels: output channels ``F_out``; ``None`` means ``channels``.
        kernel_size: odd size of the convolution.
        stride: stride of the convolution and of the attention's Q/K/V projection.
        dk: total key depth, an int or the fraction κ of ``out_channels`` (paper: 0.2
            for ResNets with κ = 2υ).
        dv: total value depth, an int or the fraction υ of ``out_channels``.
        num_heads: heads ``N_h`` (the paper uses 8 in ResNets; 4 here so the defaults
            fit narrow layers); must divide integer ``dk`` and ``dv``.
        rel_pos: relative position logits (on in the paper).
        max_size: largest H or W whose offsets all get their own embedding.
        bias: whether the convolution has a bias (off when followed by batch norm).

    Shape:
        ``(B, C, H, W) -> (B, out_channels, ceil(H/stride), ceil(W/stride))``.
        Records ``(B, N_h, N, N)`` with ``N`` the number of output positions.

    Example:
        >>> import torch
        >>> aa = AttentionAugmentedConv2d(64, out_channels=128, dk=0.2, dv=0.1, num_heads=8)
        >>> aa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 128, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        kernel_size: int = 3,
        stride: int = 1,
        dk: int | float = 0.2,
        dv: int | float = 0.1,
        num_heads: int = 4,
        rel_pos: bool = True,
        max_size: int = 64,
        bias: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        out_channels = channels if out_channels is None else out_channels
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels <= 0:
            raise ConfigError(f"{name} expects out_channels to be a positive int, got {out_channels!r}")
        check_odd(name, "kernel_size", kernel_size)
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"{name} expects stride to be a positive int, got {stride!r}")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ConfigError(f"{name} expects num_heads to be a positive int, got {num_heads!r}")
        check_positive(name, "max_size", max_size)
        self.dk = _depth(name, "dk", dk, out_channels, num_heads)
        self.dv = _depth(name, "dv", dv, out_channels, num_heads)
        if self.dv > out_channels:
            raise ConfigError(
                f"{name} expects dv <= out_channels={out_channels}, got dv={self.dv}"
            )
        self.out_channels, self.kernel_size, self.stride = out_channels, kernel_size, stride
        self.num_heads = num_heads
        self.scale = (self.dk // num_heads) ** -0.5
        conv_out = out_channels - self.dv
        self.conv = (
            nn.Conv2d(channels, conv_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
            if conv_out > 0
            else None
        )
        self.qkv = nn.Conv2d(channels, 2 * self.dk + self.dv, 1, stride=stride)
        self.proj = nn.Conv2d(self.dv, self.dv, 1)
        self.rel_pos = RelPosEmb2d(self.dk // num_heads, max_size) if rel_pos else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.conv, self.proj):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        # Q/K/V at unit variance per input channel (the softmax saturates at the conv's fan-out scale).
        nn.init.normal_(self.qkv.weight, std=1.0 / math.sqrt(self.channels))
        for conv in (self.conv, self.qkv, self.proj):
            if conv is not None and conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if self.rel_pos is not None:
            self.rel_pos.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        attn = self.proj(self_attention_2d(self, self.qkv(x)))
        if self.conv is None:
            return attn
        return torch.cat([self.conv(x), attn], dim=1)
