"""CCNet: Criss-Cross Attention for Semantic Segmentation (Huang, Wang, Huang, Huang, Wei, Liu; ICCV 2019). https://arxiv.org/abs/1811.11721"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, reduced_channels
from ._recording import RecordsAttention

__all__ = ["CrissCrossAttention"]


@register_attn(
    "criss_cross",
    kind="gate",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation, Huang et al., ICCV 2019",
)
class CrissCrossAttention(RecordsAttention):
    """Criss-cross attention: every position attends to its row and its column, ``recurrence`` times.

    With ``Q, K`` (``C'`` wide) and ``V`` (C wide) from 1×1 convolutions, the
    position ``u`` attends to the ``H + W - 1`` positions ``Ω_u`` of its row and
    column, itself counted once (Eq. 1-2)::

        A_{i,u} = softmax_i( Q_u · K_{Ω_{i,u}} ),     H'_u = γ Σ_i A_{i,u} V_{Ω_{i,u}} + H_u

    ``γ`` starts at 0, so the layer is the identity at initialisation. The recurrent
    module (RCCA) applies the same attention ``recurrence`` times (R = 2 in the
    paper), so every position gathers context from the whole image.

    The column and row scores are batched matrix products over columns and rows:
    memory is ``O(N·(H + W))`` for ``N = H·W`` positions; no ``N×N`` matrix is built.
    The position itself appears in both its row and its column; the column copy is
    masked (``-inf``), as in the authors' code.

    Args:
        channels: input channels C.
        rd_ratio: query/key width ``C'`` as a fraction of C (C/8 in the paper).
        rd_channels: query/key width, overriding ``rd_ratio``.
        rd_divisor: the query/key width is rounded to a multiple of this.
        recurrence: number of criss-cross passes R, sharing weights.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records each pass's attention
        ``(B, H, W, H + W)`` (the last axis holds the column scores ``0..H-1`` then the
        row scores ``0..W-1``; the self entry of the column part is 0), under ``""``
        when ``recurrence == 1`` and ``"loop0"``, ``"loop1"``... otherwise.

    Example:
        >>> import torch
        >>> layer = CrissCrossAttention(16, recurrence=2)
        >>> x = torch.randn(2, 16, 7, 9)
        >>> torch.equal(layer(x), x)  # γ = 0 at initialisation
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        recurrence: int = 2,
    ) -> None:
        super().__init__()
        self.channels = check_channels("CrissCrossAttention", channels)
        if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 1:
            raise ConfigError(f"CrissCrossAttention expects recurrence to be an int >= 1, got {recurrence!r}")
        self.recurrence = recurrence
        rd = reduced_channels("CrissCrossAttention", channels, rd_ratio, rd_channels, rd_divisor)
        self.query = nn.Conv2d(channels, rd, 1)
        self.key = nn.Conv2d(channels, rd, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.query, self.key, self.value):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def _attend(self, x: torch.Tensor, name: str) -> torch.Tensor:
        h = x.shape[2]
        q, k, v = self.query(x), self.key(x), self.value(x)
        # Column scores (B, W, H, H) and row scores (B, H, W, W).
        e_col = torch.matmul(q.permute(0, 3, 2, 1), k.permute(0, 3, 1, 2))
        rows = torch.arange(h, device=x.device)
        eye = rows[:, None] == rows  # (ONNX Runtime has no boolean EyeLike)
        e_col = e_col.masked_fill(eye, float("-inf"))
        e_row = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))
        attn = torch.cat([e_col.permute(0, 2, 1, 3), e_row], dim=-1).softmax(dim=-1)  # (B, H, W, H+W)
        if self.recording:
            self.emit(name, attn)
        a_col, a_row = attn[..., :h], attn[..., h:]
        out_col = torch.matmul(a_col.permute(0, 2, 1, 3), v.permute(0, 3, 2, 1))  # (B, W, H, C)
        out_row = torch.matmul(a_row, v.permute(0, 2, 3, 1))  # (B, H, W, C)
        out = out_col.permute(0, 3, 2, 1) + out_row.permute(0, 3, 1, 2)
        return self.gamma * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("CrissCrossAttention", x, self.channels)
        for i in range(self.recurrence):
            x = self._attend(x, "" if self.recurrence == 1 else f"loop{i}")
        return x
