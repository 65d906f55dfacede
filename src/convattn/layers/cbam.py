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

- The paper's configuration (ReLU MLP, sigmoid gates, convolution without norm) runs
  in whole-layer C++ kernels, the custom op ``torch.ops.convattn_cbam.forward``
  (``csrc/cbam_cpu.cpp``, built on first use or by ``convattn kernels build``; see
  :mod:`convattn.layers.kernels`; the kernel formulas are in :mod:`convattn.layers._cbam_ops`): each
  sample is pooled, gated and refined, or differentiated, in one go, so it is read from memory once
  per direction; the MLP, the k×k convolution and their gradients are computed in the same loop, in
  parallel over the batch. The op's backward is the kernel's, except where a graph of the gradient
  is asked for (``create_graph=True``): then autograd differentiates the same formula in PyTorch ops,
  so gradients of gradients are exact.
- The official code's configuration (a ``BatchNorm2d`` after a bias-free convolution) runs in
  ``convattn_cbam.bn_forward``: in training BatchNorm needs the batch statistics of the spatial
  logits before any sample's gate exists, so each direction makes two passes over the batch (pools,
  MLP and logits; then gates and output), normalising with the batch's statistics in between and
  updating the running ones as :class:`torch.nn.BatchNorm2d` does; in evaluation the running
  statistics are an affine map inside the kernel.
- Under :class:`~convattn.models.IdentityBlend` (``identity_init``) both compute the blend
  ``x + γ·(CBAM(x) − x)`` and its gradients, ``γ``'s included, in the same passes
  (:meth:`CBAM.forward_blended`).
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
from ._cbam_ops import cbam_ops, gated_channel_pools, pair_conv, update_running_stats
from ._helpers import (
    check_channels,
    check_choice,
    check_input,
    check_odd,
    get_layer,
    reduced_channels,
)
from ._recording import RecordsAttention
from ._ops import call
from .modes import kernels_may_run, must_run_plain

__all__ = ["CbamChannel", "CbamSpatial", "CBAM"]

_PAPER = "CBAM: Convolutional Block Attention Module, Woo et al., ECCV 2018"
ORDERS = ("channel_first", "spatial_first", "parallel")


def _run_kernels(channel: nn.Module, spatial: nn.Module, x: torch.Tensor, gamma: torch.Tensor | None = None):
    """Channel-first CBAM (blended with the identity where ``gamma`` is given) in the ``convattn_cbam``
    kernels: ``(out, g, a)``, or ``None`` where they cannot serve this call.

    They compute a ReLU MLP, sigmoid gates and either a biased convolution without norm (the paper's
    configuration) or a :class:`torch.nn.BatchNorm2d` after a bias-free one (the official code's and
    timm's): batch statistics in training, the running ones in evaluation, the running ones updated
    here as BatchNorm updates them.
    """
    cm, sm = channel._modules, spatial._modules  # read once: a Module attribute lookup costs about a microsecond
    if not (type(cm["act"]) is nn.ReLU and type(cm["gate"]) is nn.Sigmoid and type(sm["gate"]) is nn.Sigmoid):
        return None
    fc1, fc2, conv, bn = cm["fc1"], cm["fc2"], sm["conv"], sm["norm"]
    params = (fc1.weight, fc1.bias, fc2.weight, fc2.bias, conv.weight)
    if type(bn) is nn.Identity:
        bias = conv.bias
        if bias is None or not kernels_may_run(x, (*params, bias, gamma)):
            return None
        ops = cbam_ops()
        return None if ops is None else call(ops.forward.default, x, *params, bias, gamma)[:3]
    if type(bn) is not nn.BatchNorm2d or conv.bias is not None:
        return None
    batch_stats = bn.training or bn.running_mean is None
    running = (None, None) if batch_stats else (bn.running_mean, bn.running_var)
    buffers = (bn.running_mean, bn.running_var)  # of the input's dtype, as the plain path needs them
    if not kernels_may_run(x, (*params, bn.weight, bn.bias, *buffers, gamma)):
        return None
    n = x.shape[0] * x.shape[2] * x.shape[3]
    ops = cbam_ops()
    if ops is None or (batch_stats and n < 2):  # one value per channel: BatchNorm's own error
        return None
    out, g, a, *_, mean, var = call(ops.bn_forward.default, x, *params, bn.weight, bn.bias, *running, bn.eps, gamma)
    if bn.training and bn.track_running_stats:
        update_running_stats(bn, mean, var, n)
    return out, g, a


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
        logits = F.linear(hidden.view(2, b, hidden.shape[-1]).sum(0), self.fc2.weight)
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
        if not must_run_plain(stats) and stats.device.type == "cpu":
            logits = pair_conv(stats, self.conv.weight)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        if self.order == "channel_first":
            fused = _run_kernels(self.channel, self.spatial, x)
            if fused is not None:
                out, g, a = fused
            elif torch.is_grad_enabled() or must_run_plain(x):
                g = self.channel.weights(x)
                refined = x * g[:, :, None, None]
                a = self.spatial.weights(refined)
                out = refined * a
            else:  # inference: `out` is this call's own tensor, refined in place
                g = self.channel.weights(x)
                out, stats = gated_channel_pools(x, g)
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
        self._record(g, a)
        return out

    def forward_blended(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor | None:
        """The identity blend ``x + γ · (self(x) − x)`` computed inside the kernels (forward and backward,
        ``γ``'s gradient included), recording the maps as :meth:`forward` does; ``None`` where the kernels
        cannot serve the call (then :class:`~convattn.models.IdentityBlend` blends in PyTorch ops)."""
        check_input(type(self).__name__, x, self.channels)
        fused = _run_kernels(self.channel, self.spatial, x, gamma) if self.order == "channel_first" else None
        if fused is None:
            return None
        self._record(*fused[1:])
        return fused[0]

    def _record(self, g: torch.Tensor, a: torch.Tensor) -> None:
        if self.recording:
            self.emit("channel", g)
            self.emit("spatial", a)
