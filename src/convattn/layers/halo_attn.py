"""Scaling Local Self-Attention for Parameter Efficient Visual Backbones (HaloNet; Vaswani, Ramachandran, Srinivas, Parmar, Hechtman, Shlens; CVPR 2021). https://arxiv.org/abs/2103.12731"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError, ShapeError
from ..registry import register_attn
from ._helpers import check_channels, check_input
from ._recording import RecordsAttention
from .bottleneck_attn import self_attention_dims
from .functional import attention

# One call in torch.fx graphs: its shape arithmetic runs on real tensors at run time.
torch.fx.wrap("attention")

__all__ = ["HaloAttn"]


def _exporting() -> bool:
    """Inside ``torch.export`` tracing (``torch.compiler.is_exporting``, where this torch has it)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


@register_attn(
    "halo",
    kind="gate",
    paper="Scaling Local Self-Attention for Parameter Efficient Visual Backbones, Vaswani et al., CVPR 2021",
)
class HaloAttn(RecordsAttention):
    """HaloNet blocked local self-attention with 2-D relative positions.

    The map is cut into ``b × b`` query blocks (``b = block_size``); each block attends
    to its ``(b + 2h) × (b + 2h)`` neighbourhood (the block plus a halo of
    ``h = halo_size``). For query ``i`` and key ``j`` of the window::

        logits_{ij} = s · q_i·k_j + q_i·r^H_{y_j - y_i} + q_i·r^W_{x_j - x_i},   s = d_qk^{-1/2}

    The relative offsets within a window lie in ``[-(b + h - 1), b + h - 1]`` whatever
    the input size, so the tables (``2(b + h) - 1`` rows each) do not depend on H×W.

    Any H×W works: the map is zero-padded at the bottom and right to a multiple of
    ``b`` and the halo reaches past the border. With ``mask_padding=True`` (default)
    keys outside the input are masked out of the softmax, so every output depends on
    real positions only. With ``mask_padding=False`` they take part as zero keys and
    values, as in timm's ``HaloAttn``; for H, W divisible by ``b`` the layer then
    equals timm's (same weight layout: timm's tables are ``2(b + 2h) - 1`` long, and
    rows ``2h .. 2h + 2(b + h) - 2`` are the ones it uses; tested). Both agree on
    blocks whose window lies inside the input. The q/k/v split follows timm: keys and
    values come from one convolution whose channels are per head ``[k, v]``.

    Args:
        channels: input (and output) channels C.
        num_heads: attention heads; must divide C.
        dim_head: per-head query/key width; default ``make_divisible(C · qk_ratio, 8) // num_heads``.
        block_size: query block side b (8 in the paper).
        halo_size: halo h around each block (3 in the paper).
        qk_ratio: query/key width relative to C when ``dim_head`` is not given.
        qkv_bias: bias in the q and kv projections.
        scale_pos_embed: scale the position logits by ``s`` as well.
        mask_padding: mask keys outside the input (see above).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the attention
        ``(B, heads, blocks, b², (b + 2h)²)``, blocks in row-major order over the
        padded map.

    Example:
        >>> import torch
        >>> layer = HaloAttn(16, block_size=4, halo_size=1)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        dim_head: int | None = None,
        block_size: int = 8,
        halo_size: int = 3,
        qk_ratio: float = 1.0,
        qkv_bias: bool = False,
        scale_pos_embed: bool = False,
        mask_padding: bool = True,
    ) -> None:
        super().__init__()
        self.channels = check_channels("HaloAttn", channels)
        self.dim_qk, self.dim_v = self_attention_dims("HaloAttn", channels, num_heads, dim_head, qk_ratio)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"HaloAttn expects block_size to be a positive int, got {block_size!r}")
        if isinstance(halo_size, bool) or not isinstance(halo_size, int) or halo_size < 0:
            raise ConfigError(f"HaloAttn expects halo_size to be an int >= 0, got {halo_size!r}")
        self.num_heads = num_heads
        self.block_size = block_size
        self.halo_size = halo_size
        self.win_size = block_size + 2 * halo_size
        self.scale = self.dim_qk**-0.5
        self.scale_pos_embed = bool(scale_pos_embed)
        self.mask_padding = bool(mask_padding)
        self.q = nn.Conv2d(channels, num_heads * self.dim_qk, 1, bias=qkv_bias)
        self.kv = nn.Conv2d(channels, num_heads * (self.dim_qk + self.dim_v), 1, bias=qkv_bias)
        rel = 2 * (block_size + halo_size) - 1
        self.height_rel = nn.Parameter(torch.empty(rel, self.dim_qk))
        self.width_rel = nn.Parameter(torch.empty(rel, self.dim_qk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As timm: truncated normal with fan-in std for the projections, s for the tables.
        std = self.q.weight.shape[1] ** -0.5
        for conv in (self.q, self.kv):
            nn.init.trunc_normal_(conv.weight, std=std)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.trunc_normal_(self.height_rel, std=self.scale)
        nn.init.trunc_normal_(self.width_rel, std=self.scale)

    def _windows(self, t: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
        """``(B, D, H, W) -> (B, D, nh, nw, win, win)``: every block's haloed window."""
        hs, bs = self.halo_size, self.block_size
        t = F.pad(t, (hs, hs + pad_w, hs, hs + pad_h))
        return t.unfold(2, self.win_size, bs).unfold(3, self.win_size, bs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("HaloAttn", x, self.channels)
        b, _, h, w = x.shape
        if _exporting() and not (isinstance(h, int) and isinstance(w, int)):
            raise ShapeError(
                "HaloAttn expects a static H×W under torch.export (and ONNX export with dynamo=True), got "
                f"dynamic sizes ({h}, {w}): its block count is fixed when the program is traced. Export at the "
                "deployment size (a dynamic batch works)"
            )
        bs, win, nh, dqk, dv = self.block_size, self.win_size, self.num_heads, self.dim_qk, self.dim_v
        pad_h, pad_w = (-h) % bs, (-w) % bs
        gh, gw = (h + pad_h) // bs, (w + pad_w) // bs
        nblk = gh * gw

        q = F.pad(self.q(x), (0, pad_w, 0, pad_h))
        q = q.reshape(b, nh, dqk, gh, bs, gw, bs).permute(0, 1, 3, 5, 4, 6, 2)  # (B, nh, gh, gw, bs, bs, d)
        q = q.reshape(b, nh, nblk, bs, bs, dqk)
        kv = self._windows(self.kv(x), pad_h, pad_w).reshape(b, nh, dqk + dv, nblk, win * win)
        k, v = kv.permute(0, 1, 3, 4, 2).split([dqk, dv], dim=-1)  # (B, nh, blocks, win², d)

        # Relative logits: offset of window key kw from block query qb is kw - qb - h,
        # table row kw - qb + b - 1.
        pos = torch.arange(win, device=x.device)[None, :] - torch.arange(bs, device=x.device)[:, None] + bs - 1
        rel_h = torch.einsum("...yxd,ykd->...yxk", q, self.height_rel[pos].to(q.dtype))
        rel_w = torch.einsum("...yxd,xkd->...yxk", q, self.width_rel[pos].to(q.dtype))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, nh, nblk, bs * bs, win * win)
        if self.scale_pos_embed:
            bias = bias * self.scale
        if self.mask_padding:
            valid = self._windows(x.new_ones(1, 1, h, w), pad_h, pad_w).reshape(nblk, win * win)
            bias = bias.masked_fill(valid[:, None, :] == 0, float("-inf"))

        q = q.reshape(b, nh, nblk, bs * bs, dqk)
        out, attn = attention(q, k, v, scale=self.scale, bias=bias, need_weights=self.recording)
        if attn is not None:
            self.emit("", attn)
        out = out.reshape(b, nh, gh, gw, bs, bs, dv).permute(0, 1, 6, 2, 4, 3, 5)
        out = out.reshape(b, nh * dv, gh * bs, gw * bs)
        return out[:, :, :h, :w]
