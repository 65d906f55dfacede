"""Self-Attention Generative Adversarial Networks (Zhang, Goodfellow, Metaxas, Odena; ICML 2019). https://arxiv.org/abs/1805.08318

The self-attention block of SAGAN (Sec. 3)::

    s_ij = f(x_i)ᵀ g(x_j),   β_j,i = softmax_i(s_ij)   (no 1/√d scaling)
    o_j  = Σ_i β_j,i h(x_i)
    y_i  = γ · o_i + x_i,    γ = 0 at initialisation

with f (``key``), g (``query``) 1×1 convolutions to C/8 channels and h
(``value``) a 1×1 convolution to C channels (the original SAGAN code; the paper's later version adds a C̄ → C
projection ``v``, which a C → C ``h`` subsumes).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_input, reduced_channels
from ._recording import RecordsAttention
from .functional import attention

# One call in torch.fx graphs: its shape arithmetic runs on real tensors at run time.
torch.fx.wrap("attention")

__all__ = ["SelfAttention"]


@register_attn(
    "self_attn",
    kind="gate",
    paper="Self-Attention Generative Adversarial Networks, Zhang et al., ICML 2019",
)
class SelfAttention(RecordsAttention):
    """SAGAN self-attention over all H×W positions, gated by a learned γ (0 at init).

    The default path runs fused scaled-dot-product attention (memory O(HW));
    the explicit ``softmax(QKᵀ)V`` is built only while recording.

    Args:
        channels: input channels C.
        rd_ratio: width of the query/key projections as a fraction of C (``1/8`` in the paper).
        rd_channels: query/key width, overriding ``rd_ratio``.
        rd_divisor: the query/key width is rounded to a multiple of this.
        value_proj: project the values with a 1×1 convolution (C → C); if ``False``
            the values are the input itself.
        bias: whether the 1×1 projections have biases.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the attention matrix
        ``(B, HW, HW)`` (row i: the weights of query position i over all positions).

    Example:
        >>> import torch
        >>> layer = SelfAttention(64)
        >>> x = torch.randn(2, 64, 7, 9)
        >>> torch.equal(layer(x), x)  # γ = 0: the identity at initialisation
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        value_proj: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        self.query = nn.Conv2d(channels, rd, 1, bias=bias)
        self.key = nn.Conv2d(channels, rd, 1, bias=bias)
        self.value = nn.Conv2d(channels, channels, 1, bias=bias) if value_proj else None
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.query, self.key, self.value):
            if conv is not None:
                conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def attend(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention output (before γ) as ``(B, C, H, W)`` and, if ``need_weights``, the ``(B, N, N)`` map."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, d)
        k = self.key(x).flatten(2).transpose(1, 2)
        v = (self.value(x) if self.value is not None else x).flatten(2).transpose(1, 2)  # (B, N, C)
        out, attn = attention(q, k, v, scale=1.0, need_weights=need_weights)
        return out.transpose(1, 2).reshape(b, c, h, w), attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        out, attn = self.attend(x, self.recording)
        if attn is not None:
            self.emit("", attn)
        return x + self.gamma * out
