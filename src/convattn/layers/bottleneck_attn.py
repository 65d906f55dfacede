"""Bottleneck Transformers for Visual Recognition (Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani; CVPR 2021). https://arxiv.org/abs/2101.11605"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, check_positive, make_divisible
from ._recording import RecordsAttention
from ._relpos import RelPosEmb2d
from .functional import attention

# One call in torch.fx graphs: its shape arithmetic runs on real tensors at run time.
torch.fx.wrap("attention")

__all__ = ["BottleneckAttn", "self_attention_dims"]


def self_attention_dims(
    layer: str, channels: int, num_heads: int, dim_head: int | None, qk_ratio: float
) -> tuple[int, int]:
    """Per-head query/key and value widths, as timm's BoTNet / HaloNet / lambda layers size them.

    ``dim_head`` if given, else ``make_divisible(C · qk_ratio, 8) // num_heads`` for
    queries and keys; ``C // num_heads`` for values. ``num_heads`` must divide C.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0 or channels % num_heads:
        raise ConfigError(
            f"{layer} expects num_heads to be a positive int dividing channels={channels}, got {num_heads!r}"
        )
    if dim_head is None:
        check_positive(layer, "qk_ratio", qk_ratio)
        dim_qk = make_divisible(channels * qk_ratio, 8) // num_heads
    else:
        if isinstance(dim_head, bool) or not isinstance(dim_head, int) or dim_head <= 0:
            raise ConfigError(f"{layer} expects dim_head to be a positive int, got {dim_head!r}")
        dim_qk = dim_head
    if dim_qk < 1:
        raise ConfigError(f"{layer} got a query/key width of {dim_qk} per head; set dim_head")
    return dim_qk, channels // num_heads


@register_attn(
    "bottleneck_attn",
    kind="gate",
    paper="Bottleneck Transformers for Visual Recognition, Srinivas et al., CVPR 2021",
)
class BottleneckAttn(RecordsAttention):
    """BoTNet multi-head self-attention with 2-D relative position logits (the MHSA of Fig. 4).

    With ``q, k, v`` from one 1×1 convolution and ``r^H, r^W`` the relative height
    and width embeddings, each head computes over the N = H·W positions::

        logits_{ij} = s · q_i·k_j + q_i·r^H_{y_j - y_i} + q_i·r^W_{x_j - x_i},   s = d_qk^{-1/2}
        out_i = Σ_j softmax_j(logits_{ij}) v_j

    (``scale_pos_embed=True`` scales the position term by ``s`` too). The heads'
    outputs are concatenated: C channels in, C out, stride 1. BoTNet's stride-2 block
    follows the layer with a 2×2 average pool; do that outside.

    Relative positions are built for the input's H×W at run time (timm's
    ``BottleneckAttn`` fixes ``feat_size`` at construction): the tables hold offsets
    up to ``max_size - 1`` and larger offsets share the last embedding (clipping,
    Shaw et al. 2018). For H, W <= ``max_size`` the layer is exactly timm's
    ``BottleneckAttn`` built for that size with the central ``2H - 1`` / ``2W - 1`` rows
    of the tables (tested). The position logits are folded into widened queries and
    keys, so the fused attention kernel runs without an N×N bias: memory is
    O(N·(d + H + W)); the explicit ``softmax`` path runs only while recording.

    Args:
        channels: input (and output) channels C.
        num_heads: attention heads; must divide C.
        dim_head: per-head query/key width; default ``make_divisible(C · qk_ratio, 8) // num_heads``.
        qk_ratio: query/key width relative to C when ``dim_head`` is not given.
        qkv_bias: bias in the q/k/v projection.
        scale_pos_embed: scale the position logits by ``s`` as well.
        max_size: largest H or W whose every offset has its own embedding.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the attention ``(B, heads, N, N)``.

    Example:
        >>> import torch
        >>> layer = BottleneckAttn(16, num_heads=4)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        dim_head: int | None = None,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        scale_pos_embed: bool = False,
        max_size: int = 64,
    ) -> None:
        super().__init__()
        self.channels = check_channels("BottleneckAttn", channels)
        self.dim_qk, self.dim_v = self_attention_dims("BottleneckAttn", channels, num_heads, dim_head, qk_ratio)
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ConfigError(f"BottleneckAttn expects max_size to be a positive int, got {max_size!r}")
        self.num_heads = num_heads
        self.scale = self.dim_qk**-0.5
        self.scale_pos_embed = bool(scale_pos_embed)
        self.qkv = nn.Conv2d(channels, num_heads * (2 * self.dim_qk + self.dim_v), 1, bias=qkv_bias)
        self.pos_embed = RelPosEmb2d(self.dim_qk, max_size=max_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As timm: truncated normal with fan-in std for the projection, s for the tables.
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.weight.shape[1] ** -0.5)
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        nn.init.trunc_normal_(self.pos_embed.height, std=self.scale)
        nn.init.trunc_normal_(self.pos_embed.width, std=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("BottleneckAttn", x, self.channels)
        b, _, h, w = x.shape
        nh, dqk, dv = self.num_heads, self.dim_qk, self.dim_v
        q, k, v = torch.split(self.qkv(x), [nh * dqk, nh * dqk, nh * dv], dim=1)
        q = q.reshape(b, nh, dqk, h * w).transpose(-1, -2)
        k = k.reshape(b, nh, dqk, h * w).transpose(-1, -2)
        v = v.reshape(b, nh, dv, h * w).transpose(-1, -2)
        # q'·k' = q·k + rel; the content part is pre-scaled unless the whole sum is.
        q_aug, k_aug = self.pos_embed.augment(q, k, h, w)
        if self.scale_pos_embed:
            scale = self.scale
        else:
            q_aug = torch.cat([q_aug[..., :dqk] * self.scale, q_aug[..., dqk:]], dim=-1)
            scale = 1.0
        out, attn = attention(q_aug, k_aug, v, scale=scale, need_weights=self.recording)
        if attn is not None:
            self.emit("", attn)
        return out.transpose(-1, -2).reshape(b, nh * dv, h, w)
