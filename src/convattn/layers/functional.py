"""Attention kernels shared by the self-attention layers.

``attention`` runs ``torch.nn.functional.scaled_dot_product_attention`` (fused,
memory O(N)) unless the attention matrix itself is asked for, in which case it
computes the explicit ``softmax(Q Kᵀ · scale + bias) V`` and returns the matrix.
The two paths agree to 1e-5 in float32 (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
        q: queries ``(..., Nq, d)``.
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
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    # The fused CPU kernels need a unit-stride head dimension; otherwise SDPA silently
    # falls back to the O(N²) math path. Permuted 1×1-conv outputs are often strided.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=s)
    if dv < d:
        out = out[..., :dv]
    return out, None
