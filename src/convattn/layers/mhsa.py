"""Attention Is All You Need (Vaswani et al., NeurIPS 2017), https://arxiv.org/abs/1706.03762,
applied to the H×W positions of a feature map, with the optional 2-D relative position
logits of Attention Augmented Convolutional Networks (Bello et al., ICCV 2019),
https://arxiv.org/abs/1904.09925, as used by BoTNet (Srinivas et al., CVPR 2021).
"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, check_positive
from ._recording import RecordsAttention
from ._relpos import RelPosEmb2d
from .functional import attention

# One call in torch.fx graphs: its shape arithmetic runs on real tensors at run time.
torch.fx.wrap("attention")

__all__ = ["MultiHeadSelfAttention2d"]


@register_attn(
    "mhsa",
    kind="gate",
    paper="Attention Is All You Need, Vaswani et al., NeurIPS 2017 (2-D relative positions: "
    "Attention Augmented Convolutional Networks, Bello et al., ICCV 2019)",
)
class MultiHeadSelfAttention2d(RecordsAttention):
    """Multi-head self-attention over the H·W positions of a feature map.

    ``MultiHead(X) = Concat(head_1, …, head_h) W^O`` with
    ``head_i = softmax(Q_i K_iᵀ / √d_k + S_i) V_i``, where ``Q, K, V`` come from one
    1×1 convolution of ``x`` and ``W^O`` is a 1×1 convolution back to ``channels``
    (Vaswani et al., Eq. 1 and Sec. 3.2.2). ``S_i`` is zero, or with ``rel_pos=True``
    Bello et al.'s relative logits ``q_iᵀ r^H_{j_y-i_y} + q_iᵀ r^W_{j_x-i_x}`` (Eq. 3),
    scaled by ``1/√d_k`` together with ``Q Kᵀ`` as in their code.

    As the Transformer's attention sub-layer (and BoTNet's MHSA that replaces a 3×3
    convolution) the layer returns the projected attention output, without a skip
    connection (``residual=False``). With ``residual=True`` it returns
    ``x + W^O(·)`` and ``W^O`` starts at zero, so the layer is the identity when
    inserted into a trained network.

    Relative positions: embeddings are parameterised for offsets up to
    ``max_size - 1`` and looked up at run time for the input's H×W; larger offsets
    share the last embedding (clipping, Shaw et al. 2018). They are not interpolated.

    Memory: the default path is fused ``scaled_dot_product_attention`` (O(N), no
    N×N matrix). With ``rel_pos`` the relative logits are folded into queries and
    keys (``d_k/h + H + W`` wide) instead of an N×N bias, so that path stays O(N·(d+H+W)).
    The explicit softmax(QKᵀ)V path (N×N per head) runs only inside
    ``convattn.record_attention``, which records the attention ``(B, heads, N, N)``.

    Args:
        channels: input and output channels C.
        num_heads: number of heads h; must divide the key and value widths.
        dk: key/query width (all heads together); overrides ``qk_ratio``.
        qk_ratio: key/query width as a fraction of ``channels`` when ``dk`` is None.
        dv: value width (all heads together); ``None`` means ``channels``.
        qkv_bias: whether the Q/K/V projection has a bias.
        rel_pos: add 2-D relative position logits.
        max_size: largest H or W whose offsets all get their own embedding.
        residual: return ``x + output``, with the output projection zero-initialised.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``(B, heads, H·W, H·W)``.

    Example:
        >>> import torch
        >>> mhsa = MultiHeadSelfAttention2d(64, num_heads=4, rel_pos=True)
        >>> mhsa(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        dk: int | None = None,
        qk_ratio: float = 1.0,
        dv: int | None = None,
        qkv_bias: bool = False,
        rel_pos: bool = False,
        max_size: int = 64,
        residual: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_positive(name, "num_heads", num_heads)
        if not isinstance(num_heads, int):
            raise ConfigError(f"{name} expects num_heads to be an int, got {num_heads!r}")
        if dk is None:
            check_positive(name, "qk_ratio", qk_ratio)
            dk = max(num_heads, int(round(channels * qk_ratio / num_heads)) * num_heads)
        dv = channels if dv is None else dv
        for arg, val in (("dk", dk), ("dv", dv)):
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise ConfigError(f"{name} expects {arg} to be a positive int, got {val!r}")
            if val % num_heads:
                raise ConfigError(
                    f"{name} expects {arg} divisible by num_heads={num_heads}, got {arg}={val}"
                )
        check_positive(name, "max_size", max_size)
        self.num_heads, self.dk, self.dv = num_heads, dk, dv
        self.scale = (dk // num_heads) ** -0.5
        self.residual = bool(residual)
        self.qkv = nn.Conv2d(channels, 2 * dk + dv, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(dv, channels, 1)
        self.rel_pos = RelPosEmb2d(dk // num_heads, max_size) if rel_pos else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.qkv.weight, a=5**0.5)
        if self.qkv.bias is not None:
            nn.init.zeros_(self.qkv.bias)
        if self.residual:
            nn.init.zeros_(self.proj.weight)
        else:
            nn.init.kaiming_uniform_(self.proj.weight, a=5**0.5)
        nn.init.zeros_(self.proj.bias)
        if self.rel_pos is not None:
            self.rel_pos.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        out = self.proj(self_attention_2d(self, self.qkv(x)))
        return x + out if self.residual else out


def self_attention_2d(layer: RecordsAttention, qkv: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of a ``(B, 2·dk + dv, H, W)`` Q/K/V map -> ``(B, dv, H, W)``.

    Shared by :class:`MultiHeadSelfAttention2d` and the attention-augmented
    convolution; ``layer`` carries ``num_heads``, ``dk``, ``dv``, ``scale``,
    ``rel_pos`` (a :class:`RelPosEmb2d` or None) and the recording switch.
    """
    b, _, h, w = qkv.shape
    n, nh = h * w, layer.num_heads
    # (B, N, 2·dk + dv) with channels last: the fused kernels need unit stride on the
    # head dimension (otherwise SDPA falls back to its math path and builds N×N).
    tokens = qkv.flatten(2).transpose(1, 2).contiguous()
    q, k, v = tokens.split([layer.dk, layer.dk, layer.dv], dim=-1)
    # (B, heads, N, d): position index n = y·W + x.
    q = q.unflatten(-1, (nh, layer.dk // nh)).transpose(1, 2)
    k = k.unflatten(-1, (nh, layer.dk // nh)).transpose(1, 2)
    v = v.unflatten(-1, (nh, layer.dv // nh)).transpose(1, 2)
    rel = layer.rel_pos
    if layer.recording:
        bias = rel.bias(q, h, w) * layer.scale if rel is not None else None
        out, attn = attention(q, k, v, scale=layer.scale, bias=bias, need_weights=True)
        layer.emit("", attn)
    else:
        if rel is not None:
            q, k = rel.augment(q, k, h, w)
        out, _ = attention(q, k, v, scale=layer.scale)
    return out.transpose(1, 2).reshape(b, n, layer.dv).transpose(1, 2).reshape(b, layer.dv, h, w)
