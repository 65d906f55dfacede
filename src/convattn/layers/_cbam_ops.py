"""CBAM's kernel formulas: the ``convattn_cbam`` ops' formula in PyTorch ops, their shape (fake)
formulas and registration, the BatchNorm folding that lets the kernels serve the official code's
configuration in inference, and the CPU shortcuts of the plain path (:mod:`convattn.layers.cbam`).

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018, https://arxiv.org/abs/1807.06521
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from ._ops import layer_op_registrar

__all__ = [
    "cbam_backward_fake",
    "cbam_fake",
    "cbam_ops",
    "cbam_paper",
    "fold_batchnorm",
    "gated_channel_pools",
    "kernel_spatial",
    "pair_conv",
]


def cbam_paper(x, w1, b1, w2, b2, wc, bc):
    """Channel-first CBAM in the paper's configuration (ReLU MLP, sigmoid gates, k×k convolution with
    bias), in PyTorch ops from the parameters: ``(out, g, a)``. The formula of the ``convattn_cbam``
    kernels, differentiated by autograd where they cannot be (gradients of gradients)."""
    flat = x.flatten(2)
    pooled = torch.cat((flat.mean(-1), flat.amax(-1)))
    hidden = torch.relu(F.linear(pooled, w1, b1))
    b = x.shape[0]
    logits = F.linear(hidden.view(2, b, hidden.shape[-1]).sum(0), w2)
    g = torch.sigmoid(logits if b2 is None else logits + 2 * b2)
    refined = x * g[:, :, None, None]
    stats = torch.stack((refined.mean(1), refined.amax(1)), 1)
    a = torch.sigmoid(F.conv2d(stats, wc, bc, padding=wc.shape[-1] // 2))
    return refined * a, g, a


def cbam_fake(x, w1, b1, w2, b2, wc, bc):
    """Shapes of ``convattn_cbam::forward``: ``(out, g, a, pooled, hidden, stats)``."""
    b, c, h, w = x.shape
    r = w1.shape[0]
    new = x.new_empty
    return torch.empty_like(x), new(b, c), new(b, 1, h, w), new(b, 2, c), new(b, 2, r), new(b, 2, h, w)


def cbam_backward_fake(x, dout, w1, b1, w2, b2, wc, bc, g, a, pooled, hidden, stats, need_dx):
    """Shapes of ``convattn_cbam::backward``: ``(dx, dw1, db1, dw2, db2, dwc, dbc)``."""
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


_register = layer_op_registrar("convattn_cbam", cbam_paper, cbam_fake, cbam_backward_fake)


def cbam_ops() -> Any:
    """The ``torch.ops.convattn_cbam`` namespace (whole-layer CBAM kernels), or ``None`` where unavailable."""
    return kernels.load("convattn_cbam", _register)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``bn(conv(·))`` as one convolution, for an eval-mode BatchNorm."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = bias * scale + (bn.bias if bn.bias is not None else 0)
    return conv.weight * scale, bias


def kernel_spatial(channel: nn.Module, spatial: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The spatial convolution's weight and bias as the whole-layer kernels take them, or ``None``.

    The kernels compute a ReLU MLP, sigmoid gates and a biased convolution without norm (the
    paper's configuration). An eval-mode BatchNorm after the convolution (the official code's and
    timm's configuration) is folded into its weight and bias when no gradients are recorded.
    """
    if not (type(channel.act) is nn.ReLU and type(channel.gate) is nn.Sigmoid and type(spatial.gate) is nn.Sigmoid):
        return None
    conv, bn = spatial.conv, spatial.norm
    if type(bn) is nn.Identity:
        return (conv.weight, conv.bias) if conv.bias is not None else None
    if type(bn) is nn.BatchNorm2d and not bn.training and bn.running_var is not None and not torch.is_grad_enabled():
        return fold_batchnorm(conv, bn)
    return None


def gated_channel_pools(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``out = x · g`` and ``[mean_c(out); max_c(out)]`` as ``(B, 2, H, W)``.

    The mean is ``gᵀx / C`` per position, one batched matrix product on ``x``.
    ``out`` is a new tensor in the memory format of ``x``; callers refine it in place.
    """
    b, c, h, w = x.shape
    out = x * g[:, :, None, None]
    mean = torch.bmm((g / c).unsqueeze(1), x.flatten(2)).view(b, h, w)
    return out, torch.stack((mean, out.amax(1)), 1)


def pair_conv(stats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The 2→1 k×k convolution (no bias) of ``stats (B, 2, H, W)`` with ``weight (1, 2, k, k)``.

    Run as a depthwise convolution over the 2B maps followed by a sum over each
    pair: two to five times faster on CPU than the one-output-channel convolution,
    forward and backward (autograd's).
    """
    b, _, h, w = stats.shape
    k = weight.shape[-1]
    if b == 0:  # an empty batch: no maps to pair, and a convolution of zero groups is undefined
        return F.conv2d(stats, weight, padding=k // 2)
    per_map = F.conv2d(
        stats.reshape(1, 2 * b, h, w), weight.reshape(2, 1, k, k).repeat(b, 1, 1, 1), padding=k // 2, groups=2 * b
    )
    return per_map.view(b, 2, h, w).sum(1, keepdim=True)
