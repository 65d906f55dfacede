"""CBAM's kernel formulas: the ``convattn_cbam`` ops' formulas in PyTorch ops (the paper's
configuration, and the official code's with BatchNorm), their shape (fake) and autograd formulas and
registration, BatchNorm's running-statistics update for the kernel path, and the CPU shortcuts of the
plain path (:mod:`convattn.layers.cbam`).

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018, https://arxiv.org/abs/1807.06521
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from ._ops import autograd_backward

__all__ = [
    "cbam_backward_fake",
    "cbam_bn",
    "cbam_bn_backward_fake",
    "cbam_bn_fake",
    "cbam_fake",
    "cbam_ops",
    "cbam_paper",
    "gated_channel_pools",
    "pair_conv",
    "update_running_stats",
]


def _channel_then_stats(x, w1, b1, w2, b2):
    """The channel gate ``g`` (ReLU MLP, sigmoid), ``x · g`` and its channel pools ``[mean; max]``."""
    flat = x.flatten(2)
    pooled = torch.cat((flat.mean(-1), flat.amax(-1)))
    hidden = torch.relu(F.linear(pooled, w1, b1))
    b = x.shape[0]
    logits = F.linear(hidden.view(2, b, hidden.shape[-1]).sum(0), w2)
    g = torch.sigmoid(logits if b2 is None else logits + 2 * b2)
    refined = x * g[:, :, None, None]
    return g, refined, torch.stack((refined.mean(1), refined.amax(1)), 1)


def _blended(x, out, gamma):
    """The identity blend ``x + γ · (out − x)`` (``out`` itself without ``gamma``)."""
    return out if gamma is None else x + gamma * (out - x)


def cbam_paper(x, w1, b1, w2, b2, wc, bc, gamma=None):
    """Channel-first CBAM in the paper's configuration (ReLU MLP, sigmoid gates, k×k convolution with
    bias), blended with the identity where ``gamma`` is given, in PyTorch ops from the parameters:
    ``(out, g, a)``. The formula of ``convattn_cbam::forward``, differentiated by autograd where its
    kernels cannot be (gradients of gradients)."""
    g, refined, stats = _channel_then_stats(x, w1, b1, w2, b2)
    a = torch.sigmoid(F.conv2d(stats, wc, bc, padding=wc.shape[-1] // 2))
    return _blended(x, refined * a, gamma), g, a


def cbam_bn(x, w1, b1, w2, b2, wc, bn_w, bn_b, running_mean, running_var, eps, gamma=None):
    """Channel-first CBAM with a BatchNorm after a bias-free convolution (the official code's and
    timm's configuration) in PyTorch ops: batch statistics without ``running_mean``, else the running
    ones (never updated here). The formula of ``convattn_cbam::bn_forward``: ``(out, g, a)``."""
    g, refined, stats = _channel_then_stats(x, w1, b1, w2, b2)
    logits = F.conv2d(stats, wc, None, padding=wc.shape[-1] // 2)
    z = F.batch_norm(logits, running_mean, running_var, bn_w, bn_b, running_mean is None, 0.0, eps)
    a = torch.sigmoid(z)
    return _blended(x, refined * a, gamma), g, a


def _forward_fake(x, w1):
    b, c, h, w = x.shape
    new = x.new_empty
    return torch.empty_like(x), new(b, c), new(b, 1, h, w), new(b, 2, c), new(b, 2, w1.shape[0]), new(b, 2, h, w)


def _grad_fake(x, t):
    return x.new_empty(0) if t is None else x.new_empty(t.shape)


def _dx_fake(x, need_dx):
    return torch.empty_like(x) if need_dx else x.new_empty(0)


def cbam_fake(x, w1, b1, w2, b2, wc, bc, gamma=None):
    """Shapes of ``convattn_cbam::forward``: ``(out, g, a, pooled, hidden, stats)``."""
    return _forward_fake(x, w1)


def cbam_backward_fake(x, dout, w1, b1, w2, b2, wc, bc, g, a, pooled, hidden, stats, need_dx, gamma=None):
    """Shapes of ``convattn_cbam::backward``: ``(dx, dw1, db1, dw2, db2, dwc, dbc, dgamma)``."""
    params = (w1, b1, w2, b2, wc)
    return (_dx_fake(x, need_dx), *(_grad_fake(x, t) for t in params), x.new_empty(1), _grad_fake(x, gamma))


def cbam_bn_fake(x, w1, b1, w2, b2, wc, bn_w, bn_b, running_mean, running_var, eps, gamma=None):
    """Shapes of ``convattn_cbam::bn_forward``: ``forward``'s, then ``(logits, mean, var)``."""
    b, _, h, w = x.shape
    return (*_forward_fake(x, w1), x.new_empty(b, 1, h, w), x.new_empty(1), x.new_empty(1))


def cbam_bn_backward_fake(
    x, dout, w1, b1, w2, b2, wc, bn_w, bn_b, rm, rv, g, a, pooled, hidden, stats, logits, mean, var, eps, need_dx,
    gamma=None,
):
    """Shapes of ``convattn_cbam::bn_backward``: a gradient (or an empty tensor) per tensor input of
    ``bn_forward``, in its order."""
    params = (w1, b1, w2, b2, wc, bn_w, bn_b)
    return (_dx_fake(x, need_dx), *(_grad_fake(x, t) for t in params), x.new_empty(0), x.new_empty(0),
            _grad_fake(x, gamma))


def _autograd_formulas(name: str, formula, has_eps: bool):
    """The autograd formulas of ``convattn_cbam::<name>forward(x, *params, [eps], gamma=None)``, whose
    first output ``out`` is differentiable and the rest (the gates and what the backward needs) are not.
    The kernel ``<name>backward(x, dout, *params, *saved, [eps], need_dx, gamma)`` gives the gradients of
    ``x``, the parameters and ``gamma``; where a graph of the gradient is asked for (``create_graph=True``)
    autograd differentiates ``formula`` (the op in PyTorch ops) instead, so gradients of gradients are exact."""
    tail = 2 if has_eps else 1  # eps, gamma

    def setup_context(ctx, inputs, output):
        ctx.eps = inputs[-2] if has_eps else None
        ctx.num_inputs = len(inputs) - tail + 1  # x, the parameters, gamma
        ctx.save_for_backward(*inputs[: len(inputs) - tail], inputs[-1], *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    def backward(ctx, dout, *_):
        saved, needs = ctx.saved_tensors, ctx.needs_input_grad
        inputs, extra = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        need = (*needs[: len(needs) - tail], needs[-1])
        eps = (ctx.eps,) if has_eps else ()
        if dout is None:
            grads = (None,) * len(inputs)
        elif not torch.is_grad_enabled():
            # dispatched in full: when a backward is traced (AOT autograd), its fake tensors must reach the fake formula
            op = getattr(torch.ops.convattn_cbam, f"{name}backward").default
            computed = op(inputs[0], dout, *inputs[1:-1], *extra, *eps, need[0], inputs[-1])
            grads = tuple(d.view_as(t) if n else None for d, t, n in zip(computed, inputs, need))
        else:
            grads = autograd_backward(lambda *t: formula(*t[:-1], *eps, t[-1]), inputs, need, (dout,))
        return (*grads[:-1], *((None,) if has_eps else ()), grads[-1])

    return backward, setup_context


def _register(ops) -> None:
    for name, formula, fake, backward_fake, has_eps in (
        ("", cbam_paper, cbam_fake, cbam_backward_fake, False),
        ("bn_", cbam_bn, cbam_bn_fake, cbam_bn_backward_fake, True),
    ):
        torch.library.register_fake(f"convattn_cbam::{name}forward", fake)
        torch.library.register_fake(f"convattn_cbam::{name}backward", backward_fake)
        backward, setup_context = _autograd_formulas(name, formula, has_eps)
        torch.library.register_autograd(f"convattn_cbam::{name}forward", backward, setup_context=setup_context)


def cbam_ops() -> Any:
    """The ``torch.ops.convattn_cbam`` namespace (whole-layer CBAM kernels), or ``None`` where unavailable."""
    return kernels.load("convattn_cbam", _register)


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """``bn``'s running statistics after a training step whose batch statistics over ``n`` values were
    ``mean`` and (biased) ``var``, as :class:`torch.nn.BatchNorm2d` updates them."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var * (n / (n - 1)), alpha=momentum)


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
