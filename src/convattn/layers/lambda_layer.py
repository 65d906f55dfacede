"""LambdaNetworks: Modeling Long-Range Interactions Without Attention (Bello; ICLR 2021). https://arxiv.org/abs/2102.08602"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_input, check_odd, get_layer
from .bottleneck_attn import self_attention_dims

__all__ = ["LambdaLayer"]


@register_attn(
    "lambda",
    kind="gate",
    paper="LambdaNetworks: Modeling Long-Range Interactions Without Attention, Bello, ICLR 2021",
)
class LambdaLayer(nn.Module):
    """Lambda layer: each query is multiplied by a content lambda and a local position lambda.

    With queries ``Q`` (``|h|`` heads of ``|k|`` each), keys ``K`` (``|k|``) and values
    ``V`` (``|v| = C/|h|``) from one 1×1 convolution, ``Q`` and ``V`` batch-normalised
    and ``K̄`` the keys softmax-normalised over the positions (Sec. 3-4)::

        λ^c = K̄ᵀ V                                    (|k| × |v|, shared by all positions)
        λ^p_n = Σ_{m ∈ r×r around n} E_{m-n}ᵀ V_m       (|k| × |v|, the lambda convolution)
        y_n = q_nᵀ (λ^c + λ^p_n)                         (per head, heads concatenated)

    ``E`` holds one ``|k|``-vector per offset of an ``r × r`` window: the local
    lambda-convolution variant of the paper (Sec. 4.2 / Fig. 3), which works at any
    H×W. The global relative-embedding variant, which needs a fixed input size, is
    not implemented, and the intra-depth ``|u|`` is 1 (as in timm).

    Differences from timm's ``LambdaLayer``: timm's lambda convolution has a bias,
    the paper's (``tf.nn.conv3d`` on the embeddings) has none, and neither does this
    layer; with timm's bias set to zero the two are equal (tested).

    Args:
        channels: input (and output) channels C.
        num_heads: query heads ``|h|``; must divide C.
        dim_head: query/key depth ``|k|`` (16 in the paper).
        r: odd side of the lambda convolution's window (the paper's r; timm uses 9).
        qk_ratio: sets ``|k| = make_divisible(C · qk_ratio, 8) // num_heads`` when
            ``dim_head`` is ``None``.
        qkv_bias: bias in the q/k/v projection.
        norm_layer: the norm applied to queries and values (batch norm in the paper).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Lambdas are not attention maps; nothing is recorded.

    Example:
        >>> import torch
        >>> layer = LambdaLayer(16, num_heads=4, dim_head=16, r=9)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        dim_head: int | None = 16,
        r: int = 9,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        norm_layer: str | type[nn.Module] | None = "bn",
    ) -> None:
        super().__init__()
        self.channels = check_channels("LambdaLayer", channels)
        self.dim_k, self.dim_v = self_attention_dims("LambdaLayer", channels, num_heads, dim_head, qk_ratio)
        check_odd("LambdaLayer", "r", r)
        self.num_heads = num_heads
        self.r = r
        k, v = self.dim_k, self.dim_v
        self.qkv = nn.Conv2d(channels, num_heads * k + k + v, 1, bias=qkv_bias)
        norm = get_layer(norm_layer, owner="LambdaLayer", arg="norm_layer")
        self.norm_q = norm() if norm is nn.Identity else norm(num_heads * k)
        self.norm_v = norm() if norm is nn.Identity else norm(v)
        self.pos_weight = nn.Parameter(torch.empty(k, 1, r, r))  # E, one |k|-vector per offset
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As timm: fan-in truncated normal for the projection, |k|^-1/2 for E.
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.weight.shape[1] ** -0.5)
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        nn.init.trunc_normal_(self.pos_weight, std=self.dim_k**-0.5)
        for norm in (self.norm_q, self.norm_v):
            if hasattr(norm, "reset_parameters"):
                norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("LambdaLayer", x, self.channels)
        b, _, h, w = x.shape
        m, nh, dk, dv = h * w, self.num_heads, self.dim_k, self.dim_v
        q, k, v = torch.split(self.qkv(x), [nh * dk, dk, dv], dim=1)
        q = self.norm_q(q).reshape(b, nh, dk, m).transpose(-1, -2)  # (B, h, M, k)
        v = self.norm_v(v)  # (B, v, H, W)
        k = k.reshape(b, dk, m).softmax(dim=-1)  # (B, k, M), normalised over positions
        v_flat = v.reshape(b, dv, m).transpose(-1, -2)  # (B, M, v)
        content = torch.matmul(q, torch.matmul(k, v_flat).unsqueeze(1))  # (B, h, M, v)
        # λ^p: an r×r convolution of every value channel with each of the |k| embedding maps.
        lam_p = F.conv2d(v.reshape(b * dv, 1, h, w), self.pos_weight, padding=self.r // 2)
        lam_p = lam_p.reshape(b, dv, dk, m).permute(0, 3, 2, 1)  # (B, M, k, v)
        position = torch.matmul(q.unsqueeze(-2), lam_p.unsqueeze(1)).squeeze(-2)  # (B, h, M, v)
        return (content + position).transpose(-1, -2).reshape(b, nh * dv, h, w)
