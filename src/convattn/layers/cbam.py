"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon; ECCV 2018). https://arxiv.org/abs/1807.06521

Channel attention (Eq. 2)::

    Mc(F) = σ(W₁ δ(W₀ AvgPool(F)) + W₁ δ(W₀ MaxPool(F)))

spatial attention (Eq. 3)::

    Ms(F) = σ(f^{k×k}([AvgPool_c(F); MaxPool_c(F)]))

and the module (Eq. 1), channel first::

    F' = Mc(F) ⊗ F,    F'' = Ms(F') ⊗ F'

There is no residual inside the module: in the paper's ResBlock the refined
features are added to the block's shortcut by the block, not by CBAM.

Choices (documented where the paper and its code differ):

- The shared MLP has no biases by default (the paper's Eq. 2 has none; the
  official code's ``nn.Linear`` layers do: ``bias=True`` gives that).
- The spatial branch is conv → sigmoid as in Eq. 3 (the conv then has a bias).
  The official code (and timm) put a BatchNorm after a bias-free conv:
  ``norm_layer="bn"`` gives that. Pooled maps are concatenated as
  ``[avg; max]`` as in Eq. 3 and timm (the official code stacks ``[max; avg]``).

Speed: the forward pass computes the channel pools of ``x`` once, runs both
pooled vectors through the MLP as one batch, gets the channel mean of
``Mc ⊗ F`` as a batched matrix product, and runs the 2→1 k×k convolution as a
depthwise convolution over the ``2B`` pooled maps (several times faster on CPU
than oneDNN's one-output-channel path). Under ``torch.no_grad`` the gated tensor
is refined in place, so one full-size tensor is allocated per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_attn
from ._helpers import (
    check_channels,
    check_choice,
    check_input,
    check_odd,
    get_layer,
    reduced_channels,
)
from ._recording import RecordsAttention

__all__ = ["CbamChannel", "CbamSpatial", "CBAM"]

_PAPER = "CBAM: Convolutional Block Attention Module, Woo et al., ECCV 2018"
ORDERS = ("channel_first", "spatial_first", "parallel")


@register_attn("cbam_channel", kind="gate", paper=_PAPER)
class CbamChannel(RecordsAttention):
    """CBAM channel attention: ``x · σ(MLP(AvgPool(x)) + MLP(MaxPool(x)))`` (Eq. 2).

    Args:
        channels: input channels C.
        rd_ratio: reduction ratio as a fraction (the paper's r = 16 is ``1/16``).
        rd_channels: hidden width of the shared MLP, overriding ``rd_ratio``.
        rd_divisor: the hidden width is rounded to a multiple of this (1: C/16 exactly).
        act_layer: activation δ after W₀.
        gate_layer: the gate σ.
        bias: whether the MLP layers have biases (the paper's Eq. 2 has none).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the channel weights ``(B, C)``
        as ``"channel"``.

    Example:
        >>> import torch
        >>> layer = CbamChannel(64)
        >>> layer(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        bias: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Linear(channels, rd, bias=bias)
        self.act = get_layer(act_layer, owner=name, arg="act_layer")()
        self.fc2 = nn.Linear(rd, channels, bias=bias)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=5**0.5)
            if fc.bias is not None:
                nn.init.zeros_(fc.bias)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The channel attention ``Mc(x)`` as ``(B, C)``."""
        b = x.shape[0]
        pooled = torch.cat((x.mean((2, 3)), x.amax((2, 3))))  # (2B, C): both pools, one MLP batch
        hidden = self.act(self.fc1(pooled))
        # W₁ is linear: W₁h_avg + W₁h_max = W₁(h_avg + h_max) (+ the bias twice).
        logits = F.linear(hidden[:b] + hidden[b:], self.fc2.weight)
        if self.fc2.bias is not None:
            logits = logits + 2 * self.fc2.bias
        return self.gate(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        w = self.weights(x)
        if self.recording:
            self.emit("channel", w)
        return x * w[:, :, None, None]


@register_attn("cbam_spatial", kind="gate", paper=_PAPER)
class CbamSpatial(RecordsAttention):
    """CBAM spatial attention: ``x · σ(conv([mean_c(x); max_c(x)]))`` (Eq. 3).

    Args:
        channels: input channels C (the layer's weights do not depend on it).
        kernel_size: odd size k of the k×k convolution (the paper uses 7, and 3 in its ablation).
        norm_layer: optional norm after the convolution (``"bn"`` as in the official
            code and timm; the conv then has no bias). ``None`` follows Eq. 3.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the spatial map ``(B, 1, H, W)``
        as ``"spatial"``.

    Example:
        >>> import torch
        >>> layer = CbamSpatial(64, kernel_size=7)
        >>> layer(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        norm_layer: str | type[nn.Module] | None = None,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_odd(name, "kernel_size", kernel_size)
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
        self.norm = get_layer(norm_layer, owner=name, arg="norm_layer")(1)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def spatial_gate(self, stats: torch.Tensor) -> torch.Tensor:
        """``σ(norm(conv(stats)))`` for the pooled maps ``stats (B, 2, H, W)``; returns ``(B, 1, H, W)``."""
        b, _, h, w = stats.shape
        k = self.kernel_size
        # The 2→1 conv as a depthwise conv over the 2B maps, then a sum over each pair.
        weight = self.conv.weight.reshape(2, 1, k, k).repeat(b, 1, 1, 1)
        per_map = F.conv2d(stats.reshape(1, 2 * b, h, w), weight, padding=k // 2, groups=2 * b)
        logits = per_map.view(b, 2, h, w).sum(1, keepdim=True)
        if self.conv.bias is not None:
            logits = logits + self.conv.bias.view(1, 1, 1, 1)
        return self.gate(self.norm(logits))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial attention ``Ms(x)`` as ``(B, 1, H, W)``."""
        return self.spatial_gate(torch.stack((x.mean(1), x.amax(1)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        a = self.weights(x)
        if self.recording:
            self.emit("spatial", a)
        return x * a


@register_attn("cbam", kind="gate", paper=_PAPER)
class CBAM(RecordsAttention):
    """CBAM: channel attention then spatial attention (Eq. 1), no residual.

    Args:
        channels: input channels C.
        rd_ratio: reduction ratio of the channel MLP (``1/16`` in the paper).
        rd_channels: hidden width of the channel MLP, overriding ``rd_ratio``.
        rd_divisor: the hidden width is rounded to a multiple of this.
        act_layer: activation inside the channel MLP.
        gate_layer: the gate of both branches.
        bias: whether the channel MLP has biases.
        kernel_size: odd size of the spatial convolution (7 in the paper).
        norm_layer: optional norm after the spatial convolution (``"bn"`` = official code / timm).
        order: ``"channel_first"`` (the paper's best), ``"spatial_first"``, or
            ``"parallel"`` (both maps computed from the input:
            ``x · Mc(x) · Ms(x)``), the arrangements compared in the paper's Table 3.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``"channel"`` ``(B, C)`` and
        ``"spatial"`` ``(B, 1, H, W)``.

    Example:
        >>> import torch
        >>> cbam = CBAM(64)
        >>> cbam(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        bias: bool = False,
        kernel_size: int = 7,
        norm_layer: str | type[nn.Module] | None = None,
        order: str = "channel_first",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_choice(name, "order", order, ORDERS)
        self.order = order
        self.channel = CbamChannel(
            channels,
            rd_ratio=rd_ratio,
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            act_layer=act_layer,
            gate_layer=gate_layer,
            bias=bias,
        )
        self.spatial = CbamSpatial(channels, kernel_size=kernel_size, norm_layer=norm_layer, gate_layer=gate_layer)

    def reset_parameters(self) -> None:
        self.channel.reset_parameters()
        self.spatial.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        if self.order == "channel_first":
            g = self.channel.weights(x)
            refined = x * g[:, :, None, None]
            b, c, h, w = x.shape
            # mean_c(x · g) as one (1×C)·(C×HW) product per sample; max_c needs the gated tensor.
            mean = torch.matmul((g / c).unsqueeze(1), x.flatten(2)).view(b, h, w)
            a = self.spatial.spatial_gate(torch.stack((mean, refined.amax(1)), 1))
            out = refined.mul_(a) if not torch.is_grad_enabled() else refined * a
        elif self.order == "spatial_first":
            a = self.spatial.weights(x)
            refined = x * a
            g = self.channel.weights(refined)
            out = refined.mul_(g[:, :, None, None]) if not torch.is_grad_enabled() else refined * g[:, :, None, None]
        else:
            g = self.channel.weights(x)
            a = self.spatial.weights(x)
            refined = x * g[:, :, None, None]
            out = refined.mul_(a) if not torch.is_grad_enabled() else refined * a
        if self.recording:
            self.emit("channel", g)
            self.emit("spatial", a)
        return out
