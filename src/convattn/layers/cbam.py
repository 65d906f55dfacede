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
  in whole-layer C++ kernels (``csrc/cbam_cpu.cpp``, built on first use; see
  :mod:`convattn.layers._ext`): each sample is pooled, gated and refined, or
  differentiated, in one go, so it is read from memory once per direction; the MLP,
  the k×k convolution and their gradients are computed in the same loop, in parallel
  over the batch.
- Other configurations use split C++ passes (one read of the input each) and leave the
  MLP / convolution / norm to PyTorch.
- Without the kernels (no compiler, ``CONVATTN_EXTENSIONS=0``, other dtypes or devices)
  the PyTorch-op path runs: both channel pools go through the MLP as one batch, the
  channel mean of ``Mc ⊗ F`` is a matrix product ``gᵀx / C``, the 2→1 k×k convolution
  runs as a depthwise convolution over the ``2B`` pooled maps (forward and backward),
  and in training a custom autograd function does the full-size backward by hand.
- Under ``torch.export`` / ``torch.compile`` and dispatch modes (``FlopCounterMode``,
  fake tensors) the layer runs as plain tensor operations.
- The hand-written training paths are differentiable once (no gradients of gradients).

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
from ._ext import cbam_ops, fused_input, tracing
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


def _is_channels_last(x: torch.Tensor) -> bool:
    """Stored channels-last (and not also plain contiguous, as when C == 1 or H·W == 1)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _ChannelFirstCBAM(torch.autograd.Function):
    """Channel-first CBAM with a hand-written backward over the full-size tensors.

    The small graphs (the channel MLP on the pooled ``(2B, C)`` vectors, the spatial
    conv on the pooled ``(B, 2, H, W)`` maps) are built with autograd inside
    ``forward`` and differentiated with ``torch.autograd.grad`` in ``backward``;
    the full-size work (pools, gating, their gradients) is done directly, saving
    only ``x``, the gates and the two maxima. The small graphs
    are kept until the outer graph is freed, so ``backward`` can run more than once
    (``retain_graph=True``). Not twice differentiable.

    Max-pool gradients: both maxima (over C at each position, over H×W per channel)
    split their gradient evenly between tied elements, as autograd does for ``amax``.
    """

    @staticmethod
    def forward(ctx, x, layer, *params):
        b, c, h, w = x.shape
        flat = x.flatten(2)  # a view for contiguous and channels-last storage
        peak_hw = flat.amax(-1)
        pooled = torch.cat((flat.mean(-1), peak_hw)).requires_grad_()  # a leaf of the small graph
        with torch.enable_grad():
            g = layer.channel.gate_from_pooled(pooled)
        gd = g.detach()
        out = x * gd[:, :, None, None]
        mean_c = torch.bmm((gd / c).unsqueeze(1), flat).view(b, h, w)
        peak_c = out.amax(1)
        stats = torch.stack((mean_c, peak_c), 1).requires_grad_()
        with torch.enable_grad():
            a = layer.spatial.spatial_gate(stats)
        out.mul_(a.detach())
        ctx.save_for_backward(x, peak_hw)
        ctx.peak_c = peak_c  # not an input or output: kept out of the saved-tensor checks
        ctx.graphs = (pooled, g, stats, a)
        ctx.params = (tuple(layer.channel.parameters()), tuple(layer.spatial.parameters()))
        g_out, a_out = gd, a.detach()
        ctx.mark_non_differentiable(g_out, a_out)
        return out, g_out, a_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dg, _da):
        x, peak_hw = ctx.saved_tensors
        peak_c = ctx.peak_c
        pooled, g, stats, a = ctx.graphs
        ch_params, sp_params = ctx.params
        b, c, h, w = x.shape
        p = h * w
        gd, ad = g.detach(), a.detach()
        g4 = gd[:, :, None, None]
        dx = torch.empty_like(x)  # x's layout, in which (B, C, HW) is a view; the one full-size buffer
        dx3, x3 = dx.flatten(2), x.flatten(2)
        cl = _is_channels_last(x)
        # out = x · g · a: da = Σ_c g·x·dout, and Σ_p x·dout·a goes into dg
        torch.mul(dout, x, out=dx)
        da = torch.bmm(gd.unsqueeze(1), dx3).view(b, 1, h, w)
        dg = torch.bmm(ad.view(b, 1, p), dx3.transpose(1, 2)).view(b, c)
        d_stats, sp_grads = _small_grads(a, stats, sp_params, da)
        d_mean = d_stats[:, :1] / c  # (B, 1, H, W): stats[:, 0] = Σ_c g·x / C
        # stats[:, 1] = max_c g·x: the tied channels share the gradient, dmax / count
        torch.mul(x, g4, out=dx).eq_(peak_c.unsqueeze(1))
        share = d_stats[:, 1:] / dx.sum(1, keepdim=True)  # (B, 1, H, W)
        dg += torch.bmm(d_mean.reshape(b, 1, p), x3.transpose(1, 2)).view(b, c)
        if bool((gd != 0).all()):  # at a tied channel x = peak / g
            dg += torch.bmm((peak_c.view(b, 1, p) * share.view(b, 1, p)), dx3.transpose(1, 2)).view(b, c) / gd
        else:
            dg += torch.bmm(share.view(b, 1, p), (dx * x).flatten(2).transpose(1, 2)).view(b, c)
        # dx = g · (dout·a + d_mean + mask·share) + d_pool_mean / HW + the H×W max's share at its ties
        if cl:
            dx.mul_(share).add_(d_mean)
        else:
            torch.addcmul(d_mean, dx, share, out=dx)
        dx.addcmul_(dout, ad)
        d_pooled, ch_grads = _small_grads(g, pooled, ch_params, dg)
        d_avg = (d_pooled[:b] / p)[:, :, None, None]
        if cl:
            torch.addcmul(d_avg, dx, g4, out=dx)
        else:
            dx.mul_(g4).add_(d_avg)
        top = x3 == peak_hw.unsqueeze(-1)  # (B, C, HW): the positions holding each channel's max
        dx3.add_(top * (d_pooled[b:] / top.sum(-1)).unsqueeze(-1))
        return (dx, None, *ch_grads, *sp_grads)


class _FusedPaperCBAM(torch.autograd.Function):
    """The whole channel-first layer in the ``forward``/``backward`` kernels of ``csrc/cbam_cpu.cpp``,
    for the paper's configuration (ReLU MLP, sigmoid gates, convolution with bias and no norm).

    Each sample is pooled, gated and refined in one go, so its input is read from memory once per
    direction and the later passes find it in cache; the MLP, the k×k convolution and all their
    gradients are computed in the same loop. Saves ``x`` and the small per-sample results.
    """

    @staticmethod
    def forward(ctx, x, ops, w1, b1, w2, b2, wc, bc):
        out, g, a, pooled, hidden, stats = ops.forward(x, w1, b1, w2, b2, wc, bc)
        ctx.save_for_backward(x, w1, b1, w2, b2, wc, bc, g, a, pooled, hidden, stats)
        ctx.ops = ops
        ctx.mark_non_differentiable(g, a)
        return out, g, a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dg, _da):
        x, w1, b1, w2, b2, wc, bc, g, a, pooled, hidden, stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = ctx.ops.backward(x, dout, w1, b1, w2, b2, wc, bc, g, a, pooled, hidden, stats, need[0])
        dx, dw1, db1, dw2, db2, dwc, dbc = (t if n else None for t, n in zip(grads, (need[0], *need[2:])))
        return dx, None, dw1, db1, dw2, db2, dwc, dbc


class _FusedChannelFirstCBAM(torch.autograd.Function):
    """Channel-first CBAM with its full-size passes in the C++ kernels of ``csrc/cbam_cpu.cpp``.

    The same quantities as :class:`_ChannelFirstCBAM`, with each pass reading the input
    once: forward = H×W pools, channel pools of ``g·x``, the gating ``x·g·a``; backward =
    the gate gradients (with the count of tied channel maxima), the channel-max term of
    ``dg``, and the input gradient. Saves ``x`` and the two max maps.
    """

    @staticmethod
    def forward(ctx, x, layer, ops, *params):
        b, c, h, w = x.shape
        avg, peak_hw = ops.hw_pool(x)
        pooled = torch.cat((avg, peak_hw)).requires_grad_()
        with torch.enable_grad():
            g = layer.channel.gate_from_pooled(pooled)
        gd = g.detach()
        stats = ops.channel_pool(x, gd).requires_grad_()
        with torch.enable_grad():
            a = layer.spatial.spatial_gate(stats)
        ad = a.detach()
        out = ops.apply(x, gd, ad)
        ctx.save_for_backward(x, peak_hw)
        ctx.ops = ops
        ctx.graphs = (pooled, g, stats, a)
        ctx.params = (tuple(layer.channel.parameters()), tuple(layer.spatial.parameters()))
        ctx.mark_non_differentiable(gd, ad)
        return out, gd, ad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dg, _da):
        x, peak_hw = ctx.saved_tensors
        ops = ctx.ops
        pooled, g, stats, a = ctx.graphs
        b, c, h, w = x.shape
        gd, ad, peak = g.detach(), a.detach(), stats.detach()[:, 1]
        da, dg, count, count_hw = ops.backward_gates(x, dout, gd, ad, peak, peak_hw)
        d_stats, sp_grads = _small_grads(a, stats, ctx.params[1], da.view(b, 1, h, w))
        d_mean, share = d_stats[:, 0] / c, d_stats[:, 1] / count.view(b, h, w)
        dg = dg + ops.backward_mask(x, gd, peak, d_mean, share)
        d_pooled, ch_grads = _small_grads(g, pooled, ctx.params[0], dg)
        d_avg, d_top = d_pooled[:b] / (h * w), d_pooled[b:] / count_hw
        dx = ops.backward_input(x, dout, gd, ad, peak, d_mean, share, d_avg, peak_hw, d_top)
        return (dx, None, None, *ch_grads, *sp_grads)


def _small_grads(out, leaf, params, grad):
    """Gradients of one of the small graphs built in a forward: w.r.t. its ``leaf`` and each of ``params`` (``None`` if frozen)."""
    trainable = [q for q in params if q.requires_grad]
    grads = torch.autograd.grad(out, [leaf, *trainable], grad, retain_graph=True)
    it = iter(grads[1:])
    return grads[0], [next(it) if q.requires_grad else None for q in params]


def _fused_ops(layer: nn.Module, x: torch.Tensor):
    """The C++ kernels when they take ``x`` (see :func:`fused_input`), else ``None``."""
    return cbam_ops() if fused_input(x, layer.parameters()) else None


def _pair_conv(stats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The 2→1 k×k convolution (no bias) of ``stats (B, 2, H, W)`` with ``weight (1, 2, k, k)``.

    Run as a depthwise convolution over the 2B maps followed by a sum over each
    pair: several times faster on CPU than the one-output-channel convolution.
    """
    b, _, h, w = stats.shape
    k = weight.shape[-1]
    per_map = F.conv2d(
        stats.reshape(1, 2 * b, h, w), weight.reshape(2, 1, k, k).repeat(b, 1, 1, 1), padding=k // 2, groups=2 * b
    )
    return per_map.view(b, 2, h, w).sum(1, keepdim=True)


class _PairConv(torch.autograd.Function):
    """``_pair_conv`` with a backward in the same depthwise form (the generic 2→1 convolution
    backward is several times slower on CPU): the input gradient is the output gradient,
    copied to both maps, convolved with the flipped kernel; the weight gradient is each padded
    pooled map convolved with its sample's output gradient, summed over the batch."""

    @staticmethod
    def forward(ctx, stats, weight):
        ctx.save_for_backward(stats, weight)
        return _pair_conv(stats, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        stats, weight = ctx.saved_tensors
        b, _, h, w = stats.shape
        k = weight.shape[-1]
        p = k // 2
        per_map = grad.expand(b, 2, h, w).reshape(1, 2 * b, h, w)
        d_stats = d_weight = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(-1, -2).reshape(2, 1, k, k).repeat(b, 1, 1, 1)
            d_stats = F.conv2d(per_map, flipped, padding=p, groups=2 * b).view(b, 2, h, w)
        if ctx.needs_input_grad[1]:
            padded = F.pad(stats, (p, p, p, p)).reshape(1, 2 * b, h + 2 * p, w + 2 * p)
            d_weight = F.conv2d(padded, per_map.view(2 * b, 1, h, w), groups=2 * b).view(b, 2, k, k).sum(0, keepdim=True)
        return d_stats, d_weight


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
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            logits = _PairConv.apply(stats, self.conv.weight)
        else:
            logits = _pair_conv(stats, self.conv.weight)
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
            if tracing():  # torch.export / torch.compile / FlopCounterMode and other dispatch modes: plain ops
                g = self.channel.weights(x)
                refined = x * g[:, :, None, None]
                a = self.spatial.weights(refined)
                out = refined * a
            elif (ops := _fused_ops(self, x)) is not None and (spatial := self._kernel_spatial()) is not None:
                ch = self.channel
                w = (ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, *spatial)
                if torch.is_grad_enabled():
                    out, g, a = _FusedPaperCBAM.apply(x, ops, *w)
                else:
                    out, g, a = ops.forward(x, *w)[:3]
            elif ops is not None:
                if torch.is_grad_enabled():
                    out, g, a = _FusedChannelFirstCBAM.apply(
                        x, self, ops, *self.channel.parameters(), *self.spatial.parameters()
                    )
                else:
                    avg, peak = ops.hw_pool(x)
                    g = self.channel.gate_from_pooled(torch.cat((avg, peak)))
                    a = self.spatial.spatial_gate(ops.channel_pool(x, g))
                    out = ops.apply(x, g, a)
            elif torch.is_grad_enabled():
                if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
                    x = x.contiguous()  # the hand-written backward works on (B, C, HW) views
                out, g, a = _ChannelFirstCBAM.apply(x, self, *self.channel.parameters(), *self.spatial.parameters())
            else:
                g = self.channel.weights(x)
                out, stats = _gated_channel_pools(x, g)
                a = self.spatial.spatial_gate(stats)
                out.mul_(a)  # `out` is this call's own tensor: refine it in place
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
