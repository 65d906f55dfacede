"""Attention kernels shared by the self-attention layers.

``attention`` runs ``torch.nn.functional.scaled_dot_product_attention`` (fused,
memory O(N)) unless the attention matrix itself is asked for, in which case it
computes the explicit ``softmax(Q Kᵀ · scale + bias) V`` and returns the matrix.
The two paths agree to 1e-5 in float32 (tested).

Whatever the layout of its arguments, ``attention`` hands SDPA 4-D
``(batch, heads, N, d)`` tensors (leading dimensions folded into the batch), the
only form every exporter accepts (ONNX with ``dynamo=True`` rejects 3-D and 5-D).

Second-order gradients: the fused CPU and CUDA backward kernels have no derivative,
so a gradient penalty (``torch.autograd.grad(..., create_graph=True)``) through
plain SDPA fails. In eager autograd ``attention`` therefore runs SDPA inside
``_FusedAttention``: its forward records the fused kernel's own graph, and its
backward replays that graph (the fused backward, same speed and O(N) memory) unless
the backward itself is being differentiated (grad mode on during backward, i.e.
``create_graph=True``); then it returns the same gradients written as plain,
differentiable tensor operations (O(N²) memory, that step only). Under tracers and
transforms (``torch.compile``, ``torch.export``, ``torch.jit.trace``, ONNX export,
``torch.func``, dispatch modes such as ``FlopCounterMode``) and without autograd,
SDPA is called directly. Under forward-mode AD (dual tensors, ``torch.func.jvp`` /
``jacfwd``), whose formulas the fused kernels lack, SDPA runs its math backend
(O(N²) memory). :mod:`convattn.layers.modes` decides which. ``torch.fx.symbolic_trace`` records ``attention`` as one
call (callers register it with ``torch.fx.wrap``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._ops import autograd_backward
from .modes import double_backward_wrapper_may_run, fused_attention_may_run

__all__ = ["attention", "attention_explicit"]


def attention_explicit(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: ``A = softmax(q kᵀ · scale + bias)``, returns ``(A v, A)``.

    Shapes: ``q (..., Nq, d)``, ``k (..., Nk, d)``, ``v (..., Nk, dv)``,
    ``bias`` broadcastable to ``(..., Nq, Nk)``.
    """
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.matmul(q, k.transpose(-2, -1)) * s
    if bias is not None:
        logits = logits + bias
    attn = logits.softmax(dim=-1)
    return torch.matmul(attn, v), attn


class _FusedAttention(torch.autograd.Function):
    """Fused SDPA whose backward is differentiable again (see the module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):  # type: ignore[override]
        leaves = tuple(t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in (q, k, v, bias))
        with torch.enable_grad():
            out = F.scaled_dot_product_attention(*leaves[:3], attn_mask=leaves[3], scale=scale)
        # The fused kernel's own graph, replayed (and released) by the first backward.
        ctx.fused = (out, leaves)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, bias)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():  # create_graph=True: a gradient penalty differentiates this
            def explicit(q, k, v, bias):
                return (attention_explicit(q, k, v, ctx.scale, bias)[0],)

            return (*autograd_backward(explicit, (q, k, v, bias), wanted, (grad_out.to(q.dtype),)), None)
        if ctx.fused is None:  # a second backward through a retained graph: run the kernel again
            leaves = tuple(t.detach().requires_grad_(w) if t is not None else None for t, w in zip((q, k, v, bias), wanted))
            with torch.enable_grad():
                out = F.scaled_dot_product_attention(*leaves[:3], attn_mask=leaves[3], scale=ctx.scale)
        else:
            out, leaves = ctx.fused
            ctx.fused = None
        inputs = [t for t, w in zip(leaves, wanted) if w]
        with torch.enable_grad():  # an empty batch leaves the bias out of the kernel's graph: zero gradient
            grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
        found = iter(torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads))
        return (*(next(found) if w else None for w in wanted), None)


def _to_4d(t: torch.Tensor) -> torch.Tensor:
    """``(..., N, d)`` -> ``(batch, heads, N, d)``: the layout SDPA and its exporters take."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() > 4:
        return t.flatten(0, -4)
    return t


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention, fused unless ``need_weights``.

    Args:
        q: queries ``(..., Nq, d)``, with 1 to 3 leading dimensions.
        k: keys ``(..., Nk, d)``.
        v: values ``(..., Nk, dv)``; ``dv`` may differ from ``d``.
        scale: logit scale; ``None`` means ``1/sqrt(d)``. SAGAN, non-local and
            DANet use ``1.0`` (no scaling), as their papers do.
        bias: additive logits broadcastable to ``(..., Nq, Nk)`` (relative
            positions); it is an N×N tensor, so memory is O(N²) with a bias.
        need_weights: return the attention matrix (explicit path).

    Returns:
        ``(out (..., Nq, dv), attn (..., Nq, Nk) or None)``.

    The CPU flash kernel wants equal query and value widths and unit-stride rows; when they differ the
    narrower of ``q/k`` and ``v`` is zero-padded (zeros change neither ``q kᵀ`` nor
    the kept output columns) and the output is sliced back.

    Example:
        >>> q, k, v = torch.randn(2, 16, 8), torch.randn(2, 12, 8), torch.randn(2, 12, 4)
        >>> out, attn = attention(q, k, v)
        >>> out.shape, attn is None
        (torch.Size([2, 16, 4]), True)
    """
    if need_weights:
        out, attn = attention_explicit(q, k, v, scale, bias)
        return out, attn
    d, dv = q.shape[-1], v.shape[-1]
    s = 1.0 / math.sqrt(d) if scale is None else scale
    if d < dv:
        q = F.pad(q, (0, dv - d))
        k = F.pad(k, (0, dv - d))
    elif dv < d:
        v = F.pad(v, (0, d - dv))
    lead = q.shape[:-2]
    if bias is not None:
        if bias.dtype != q.dtype:
            bias = bias.to(q.dtype)
        if bias.dim() != 4 or q.dim() != 4:
            bias = _to_4d(bias.expand(*lead, q.shape[-2], k.shape[-2]))
    # The fused CPU kernels need a unit-stride head dimension; otherwise SDPA silently
    # falls back to the O(N²) math path. Permuted 1×1-conv outputs are often strided.
    q, k, v = (_to_4d(t if t.stride(-1) == 1 else t.contiguous()) for t in (q, k, v))
    if not fused_attention_may_run():  # forward-mode AD: the fused kernels have no formulas for it
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=s)
    elif double_backward_wrapper_may_run(q, k, v, bias):
        out = _FusedAttention.apply(q, k, v, bias, s)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=s)
    if len(lead) == 1:
        out = out.squeeze(1)
    elif len(lead) > 2:
        out = out.unflatten(0, lead[:-1])
    if dv < d:
        out = out[..., :dv]
    return out, None
