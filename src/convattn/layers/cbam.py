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

Speed (the default channel-first order, CPU, float32/float64). The layer is
memory-bound: its cost is the number of times the full-size tensor is read or written.

- The paper's configuration (ReLU MLP, sigmoid gates, convolution without norm; in
  inference also with an eval-mode BatchNorm, folded into the convolution) runs
  in whole-layer C++ kernels, the custom op ``torch.ops.convattn_cbam.forward``
  (``csrc/cbam_cpu.cpp``, built on first use or by ``convattn kernels build``; see
  :mod:`convattn.layers._ext`): each sample is pooled, gated and refined, or
  differentiated, in one go, so it is read from memory once per direction; the MLP,
  the k×k convolution and their gradients are computed in the same loop, in parallel
  over the batch. The op's backward is the kernel's, except where a graph of the
  gradient is asked for (``create_graph=True``) or the recorded gates carry a gradient:
  then autograd differentiates the same formula in PyTorch ops, so gradients of
  gradients are exact.
- Everything else runs plain PyTorch ops: other configurations, other dtypes or
  devices, ``CONVATTN_EXTENSIONS=0``, and the modes in which tools must see what is
  computed (``torch.compile`` / ``torch.export``, ``torch.jit.trace`` and ONNX export,
  ``torch.func``, autocast, dispatch modes such as ``FlopCounterMode``). In CPU eager mode
  the 2→1 k×k convolution runs as a depthwise convolution over the ``2B`` pooled maps,
  and inference computes the channel mean of ``Mc ⊗ F`` as a matrix product ``gᵀx / C``.

``benchmarks/speed_targets.py`` measures it against timm's CbamModule.

Max-pool gradients in training: both maxima (over C at each position, over H×W per
channel) split their gradient evenly between tied elements, as autograd does for
``amax`` and so for timm's module. Ties are common after a ReLU (positions where every
channel is 0, channels that are 0 everywhere).
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
from ._ext import call, kernels, layer_op_registrar, plain_only, use_kernels
from ._recording import RecordsAttention

__all__ = ["CbamChannel", "CbamSpatial", "CBAM"]

_PAPER = "CBAM: Convolutional Block Attention Module, Woo et al., ECCV 2018"
ORDERS = ("channel_first", "spatial_first", "parallel")


def _gated_channel_pools(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = x · g`` and ``[mean_c(out); max_c(out)]`` as ``(B, 2, H, W)``.

    The mean is ``gᵀx / C`` per position, one batched matrix product on ``x``.
    ``out`` is a new tensor in the memory format of ``x``; callers refine it in place.
    """
    b, c, h, w = x.shape
    out = x * g[:, :, None, None]
    mean = torch.bmm((g / c).unsqueeze(1), x.flatten(2)).view(b, h, w)
    return out, torch.stack((mean, out.amax(1)), 1)


def _cbam_paper(x, w1, b1, w2, b2, wc, bc):
    """Channel-first CBAM in the paper's configuration (ReLU MLP, sigmoid gates, k×k convolution with
    bias), in PyTorch ops from the parameters: ``(out, g, a)``. The formula of the ``convattn_cbam``
    kernels, differentiated by autograd where they cannot be (gradients of gradients)."""
    flat = x.flatten(2)
    pooled = torch.cat((flat.mean(-1), flat.amax(-1)))
    hidden = torch.relu(F.linear(pooled, w1, b1))
    b = x.shape[0]
    logits = F.linear(hidden.view(2, b, -1).sum(0), w2)
    g = torch.sigmoid(logits if b2 is None else logits + 2 * b2)
    refined = x * g[:, :, None, None]
    stats = torch.stack((refined.mean(1), refined.amax(1)), 1)
    a = torch.sigmoid(F.conv2d(stats, wc, bc, padding=wc.shape[-1] // 2))
    return refined * a, g, a


def _cbam_fake(x, w1, b1, w2, b2, wc, bc):
    b, c, h, w = x.shape
    r = w1.shape[0]
    new = x.new_empty
    return torch.empty_like(x), new(b, c), new(b, 1, h, w), new(b, 2, c), new(b, 2, r), new(b, 2, h, w)


def _cbam_backward_fake(x, dout, w1, b1, w2, b2, wc, bc, g, a, pooled, hidden, stats, need_dx):
    r, c, k = w1.shape[0], x.shape[1], wc.shape[-1]
    return (
        torch.empty_like(x) if need_dx else x.new_empty(0),
        x.new_empty(r, c),
        x.new_empty(r if b1 is not None else 0),
        x.new_empty(c, r),
        x.new_empty(c if b2 is not None else 0),
        x.new_empty(1, 2, k, k),
        x.new_empty(1),
    )


_register_cbam = layer_op_registrar("convattn_cbam", _cbam_paper, _cbam_fake, _cbam_backward_fake)


def cbam_ops():
    """The ``torch.ops.convattn_cbam`` namespace (whole-layer CBAM kernels), or ``None`` where unavailable."""
    return kernels("convattn_cbam", _register_cbam)


def _pair_conv(stats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The 2→1 k×k convolution (no bias) of ``stats (B, 2, H, W)`` with ``weight (1, 2, k, k)``.

    Run as a depthwise convolution over the 2B maps followed by a sum over each
    pair: two to five times faster on CPU than the one-output-channel convolution,
    forward and backward (autograd's).
    """
    b, _, h, w = stats.shape
    k = weight.shape[-1]
    per_map = F.conv2d(
        stats.reshape(1, 2 * b, h, w), weight.reshape(2, 1, k, k).repeat(b, 1, 1, 1), padding=k // 2, groups=2 * b
    )
    return per_map.view(b, 2, h, w).sum(1, keepdim=True)


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
        flat = x.flatten(2)
        return self.gate_from_pooled(torch.cat((flat.mean(-1), flat.amax(-1))))

    def gate_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """``Mc`` from the stacked pools ``[avg; max]`` of shape ``(2B, C)``: both run through the MLP as one batch."""
        b = pooled.shape[0] // 2
        hidden = self.act(self.fc1(pooled))
        # W₁ is linear: W₁h_avg + W₁h_max = W₁(h_avg + h_max) (+ the bias twice).
        logits = F.linear(hidden.view(2, b, -1).sum(0), self.fc2.weight)
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
        if isinstance(stats, torch.Tensor) and stats.device.type == "cpu" and not plain_only():
            logits = _pair_conv(stats, self.conv.weight)
            if self.conv.bias is not None:
                logits = logits + self.conv.bias.view(1, 1, 1, 1)
        else:  # traced (FX, jit), exported, transformed (its groups would depend on the batch size) or off the CPU
            logits = self.conv(stats)
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

    def _kernel_spatial(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The spatial convolution's weight and bias as the whole-layer kernels take them, or ``None``.

        The kernels compute a ReLU MLP, sigmoid gates and a biased convolution without norm (the
        paper's configuration). An eval-mode BatchNorm after the convolution (the official code's and
        timm's configuration) is folded into its weight and bias when no gradients are recorded.
        """
        ch, sp = self.channel, self.spatial
        if not (type(ch.act) is nn.ReLU and type(ch.gate) is nn.Sigmoid and type(sp.gate) is nn.Sigmoid):
            return None
        if type(sp.norm) is nn.Identity:
            return (sp.conv.weight, sp.conv.bias) if sp.conv.bias is not None else None
        bn = sp.norm
        if type(bn) is nn.BatchNorm2d and not bn.training and bn.running_var is not None and not torch.is_grad_enabled():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = -bn.running_mean if sp.conv.bias is None else sp.conv.bias - bn.running_mean
            bias = bias * scale + (bn.bias if bn.bias is not None else 0)
            return sp.conv.weight * scale, bias
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        if self.order == "channel_first":
            ch = self.channel
            params = (ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias)
            spatial = self._kernel_spatial() if use_kernels(x, params) else None
            ops = cbam_ops() if spatial is not None and use_kernels(x, spatial) else None
            if ops is not None:
                out, g, a = call(ops.forward.default, x, *params, *spatial)[:3]
            elif torch.is_grad_enabled() or plain_only() or not isinstance(x, torch.Tensor):  # FX: a Proxy
                g = self.channel.weights(x)
                refined = x * g[:, :, None, None]
                a = self.spatial.weights(refined)
                out = refined * a
            else:  # inference: `out` is this call's own tensor, refined in place
                g = self.channel.weights(x)
                out, stats = _gated_channel_pools(x, g)
                a = self.spatial.spatial_gate(stats)
                out.mul_(a)
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
