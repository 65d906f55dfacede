"""Polarized Self-Attention: Towards High-quality Pixel-wise Regression (Liu, Shen, Tan, Liu, Xiao, Shi; 2021). https://arxiv.org/abs/2107.00782"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_choice, check_input, get_layer
from ._recording import RecordsAttention

__all__ = ["PolarizedSelfAttention"]


@register_attn(
    "psa",
    kind="gate",
    paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression, Liu et al., arXiv 2021",
)
class PolarizedSelfAttention(RecordsAttention):
    """Polarized self-attention: a channel-only and a spatial-only branch, parallel or sequential.

    With ``W_q, W_v`` 1×1 convolutions, ``F_SM`` a softmax and ``F_SG`` a sigmoid
    (Eq. 1-4 of the paper)::

        A^ch(X) = F_SG[ LN( W_z( W_v^ch(X) × F_SM(W_q^ch(X)) ) ) ]     ∈ R^{C×1×1}
        A^sp(X) = F_SG[ F_SM(GAP(W_q^sp(X))) × W_v^sp(X) ]              ∈ R^{1×H×W}
        parallel:    Z = A^ch(X) ⊙ X + A^sp(X) ⊙ X
        sequential:  Z = A^sp(Y) ⊙ Y,  Y = A^ch(X) ⊙ X

    ``W_v^ch`` maps C to C/2, ``W_q^ch`` to 1 (the softmax runs over the H·W
    positions), ``W_z`` maps C/2 back to C and is followed by a LayerNorm over the C
    channels; ``W_q^sp`` and ``W_v^sp`` map C to C/2 and the spatial query's softmax
    runs over its C/2 channels.

    This follows the paper's equations. Public implementations differ in the
    spatial branch (some take the softmax over positions after the product instead
    of over the pooled query's channels) and in whether ``W_z`` is followed by the
    LayerNorm; the tests check the equations above.

    Args:
        channels: input channels C (>= 2; the inner width is ``C // 2``).
        mode: ``"parallel"`` (PSA_p) or ``"sequential"`` (PSA_s).
        bias: whether the 1×1 convolutions have biases (the authors' code: no).
        gate_layer: the gate F_SG.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``"channel"`` ``(B, C)`` and
        ``"spatial"`` ``(B, 1, H, W)``, the two gates.

    Example:
        >>> import torch
        >>> layer = PolarizedSelfAttention(16, mode="sequential")
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        mode: str = "parallel",
        bias: bool = False,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("PolarizedSelfAttention", channels)
        if channels < 2:
            raise ConfigError(f"PolarizedSelfAttention expects channels >= 2, got channels={channels}")
        check_choice("PolarizedSelfAttention", "mode", mode, ("parallel", "sequential"))
        self.mode = mode
        inner = channels // 2
        self.ch_wv = nn.Conv2d(channels, inner, 1, bias=bias)
        self.ch_wq = nn.Conv2d(channels, 1, 1, bias=bias)
        self.ch_wz = nn.Conv2d(inner, channels, 1, bias=bias)
        self.ln = nn.LayerNorm(channels)
        self.sp_wv = nn.Conv2d(channels, inner, 1, bias=bias)
        self.sp_wq = nn.Conv2d(channels, inner, 1, bias=bias)
        self.gate = get_layer(gate_layer, owner="PolarizedSelfAttention", arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The authors' code: Kaiming (fan-in) for every 1×1 convolution, zero biases.
        for conv in (self.ch_wv, self.ch_wq, self.ch_wz, self.sp_wv, self.sp_wq):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        self.ln.reset_parameters()

    def _channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        v = self.ch_wv(x).flatten(2)  # (B, C/2, N)
        q = self.ch_wq(x).flatten(2).softmax(dim=-1)  # (B, 1, N)
        z = torch.matmul(v, q.transpose(1, 2))  # (B, C/2, 1)
        z = self.ch_wz(z.unsqueeze(-1)).reshape(b, self.channels)  # (B, C)
        return self.gate(self.ln(z))

    def _spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.sp_wq(x).mean(dim=(2, 3)).softmax(dim=-1)  # (B, C/2)
        v = self.sp_wv(x).flatten(2)  # (B, C/2, N)
        return self.gate(torch.matmul(q.unsqueeze(1), v).reshape(b, 1, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("PolarizedSelfAttention", x, self.channels)
        a_ch = self._channel_gate(x)
        z_ch = x * a_ch[:, :, None, None]
        if self.mode == "parallel":
            a_sp = self._spatial_gate(x)
            out = z_ch + x * a_sp
        else:
            a_sp = self._spatial_gate(z_ch)
            out = z_ch * a_sp
        if self.recording:
            self.emit("channel", a_ch)
            self.emit("spatial", a_sp)
        return out
