"""2-D relative position logits for self-attention over feature maps.

Attention Augmented Convolutional Networks (Bello, Zoph, Vaswani, Shlens, Le; ICCV 2019),
https://arxiv.org/abs/1904.09925, Sec. 3.1.1: the logit of query ``i`` for key ``j`` gains

    l_ij = q_iᵀ r^W_{j_x - i_x} + q_iᵀ r^H_{j_y - i_y}

with one embedding table for height offsets and one for width offsets, shared by the
heads. The tables here are parameterised for offsets up to ``max_size - 1`` and
looked up for the input's H×W at run time; offsets beyond ``max_size - 1`` are
clipped to the last embedding, as in Shaw et al. (2018). Inputs up to ``max_size``
per side therefore see exactly the paper's layer; larger inputs work too, with
far offsets sharing an embedding.

Two ways to use the logits:

- :meth:`RelPosEmb2d.bias` builds the explicit ``(..., N, N)`` logit tensor
  (O(N²) memory; used for the recorded / explicit path and in tests).
- :meth:`RelPosEmb2d.augment` folds them into the queries and keys instead:
  ``q' = [q, a^H, a^W]`` with ``a^H_i[h] = q_i · r^H_{h - i_y}`` (and the same for
  widths) and ``k' = [k, onehot(j_y), onehot(j_x)]``, so that ``q'_i · k'_j =
  q_i · k_j + l_ij`` exactly. The fused attention kernel then runs with queries and
  keys ``d + H + W`` wide, and memory stays O(N·(d + H + W)) instead of O(N²).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RelPosEmb2d", "relative_index"]


def relative_index(length: int, max_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``idx[i, j] = clip(j - i, -(max_size - 1), max_size - 1) + max_size - 1``, shape ``(length, length)``."""
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    return rel.clamp(-(max_size - 1), max_size - 1) + (max_size - 1)


class RelPosEmb2d(nn.Module):
    """Height and width relative position embeddings, ``(2·max_size - 1, dim)`` each.

    Args:
        dim: per-head query width ``d_k / N_h``.
        max_size: largest H (and W) whose offsets all get their own embedding.

    Shape:
        ``q``: ``(B, heads, H·W, dim)``, positions in row-major ``(y, x)`` order.
    """

    def __init__(self, dim: int, max_size: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.max_size = max_size
        self.height = nn.Parameter(torch.empty(2 * max_size - 1, dim))
        self.width = nn.Parameter(torch.empty(2 * max_size - 1, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Bello et al.'s code initialises the relative embeddings N(0, dim^-1/2).
        nn.init.normal_(self.height, std=self.dim**-0.5)
        nn.init.normal_(self.width, std=self.dim**-0.5)

    def tables(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings per (query, key) offset: ``(H, H, dim)`` and ``(W, W, dim)``."""
        dev = self.height.device
        th = self.height[relative_index(height, self.max_size, dev)]
        tw = self.width[relative_index(width, self.max_size, dev)]
        return th, tw

    def query_logits(self, q: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``a^H (..., N, H)`` and ``a^W (..., N, W)``: each query against every key row / column."""
        th, tw = self.tables(height, width)
        q5 = q.unflatten(-2, (height, width))
        a_h = torch.einsum("...yxd,ykd->...yxk", q5, th.to(q.dtype))
        a_w = torch.einsum("...yxd,xkd->...yxk", q5, tw.to(q.dtype))
        return a_h.flatten(-3, -2), a_w.flatten(-3, -2)

    def bias(self, q: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Explicit relative logits ``(..., N, N)`` (key index ``j = j_y·W + j_x``)."""
        a_h, a_w = self.query_logits(q, height, width)
        full = a_h[..., :, None] + a_w[..., None, :]
        return full.flatten(-2)

    def augment(
        self, q: torch.Tensor, k: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys widened so that ``q' k'ᵀ = q kᵀ + bias`` (see the module docstring)."""
        a_h, a_w = self.query_logits(q, height, width)
        pos = torch.arange(height * width, device=q.device)
        ys = torch.div(pos, width, rounding_mode="floor")  # row of position n = y·W + x
        xs = pos - ys * width
        # One-hot rows by comparison (ONNX Runtime has no float EyeLike); expand keeps N and H + W.
        eye_h = (ys[:, None] == torch.arange(height, device=k.device)).to(k.dtype)
        eye_w = (xs[:, None] == torch.arange(width, device=k.device)).to(k.dtype)
        onehot = torch.cat([eye_h, eye_w], dim=-1).expand(k.shape[:-2] + (-1, -1))
        return torch.cat([q, a_h, a_w], dim=-1), torch.cat([k, onehot], dim=-1)
