"""Rotate to Attend: Convolutional Triplet Attention Module (Misra, Nalamada, Arasanipalai, Hou; WACV 2021). https://arxiv.org/abs/2010.03045"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_input, check_odd, get_layer
from ._recording import RecordsAttention

__all__ = ["TripletAttention", "TripletGate"]


class TripletGate(nn.Module):
    """One branch of triplet attention: Z-pool, ``k×k`` conv, batch norm, gate.

    Z-pool concatenates the max and the mean over dimension 1 (max first, as the
    authors' code does); the result is convolved to one map, batch-normalised
    (momentum 0.01, as in the authors' code) and gated. Returns the gate, not the
    gated input.

    Args:
        kernel_size: odd convolution size k (7 in the paper).
        gate_layer: the gate (sigmoid in the paper).

    Shape:
        ``(B, D, P, Q) -> (B, 1, P, Q)``.
    """

    def __init__(self, *, kernel_size: int = 7, gate_layer: str | type[nn.Module] = "sigmoid") -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.gate = get_layer(gate_layer, owner="TripletAttention", arg="gate_layer")()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return self.gate(self.bn(self.conv(z)))


@register_attn(
    "triplet",
    kind="gate",
    paper="Rotate to Attend: Convolutional Triplet Attention Module, Misra et al., WACV 2021",
)
class TripletAttention(RecordsAttention):
    """Triplet attention: three rotated Z-pool + conv + BN + sigmoid gates, averaged.

    Branch ``cw`` rotates the input so that H is pooled and a ``(C, W)`` map gates
    it; branch ``hc`` pools W and gates with an ``(H, C)`` map; branch ``hw`` is a
    plain spatial gate pooling C. The output is the mean of the three gated
    tensors (Eq. 3 of the paper; ``no_spatial=True`` drops ``hw`` and averages two)::

        y = 1/3 · (x ⊙ σ(ψ₁(Z(x̂₁)))ᵀ + x ⊙ σ(ψ₂(Z(x̂₂)))ᵀ + x ⊙ σ(ψ₃(Z(x))))

    Args:
        channels: input channels C.
        kernel_size: odd size of each branch's convolution (7 in the paper).
        no_spatial: drop the ``(H, W)`` branch (the paper's ablation).
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the three gates in shapes that
        broadcast against the input: ``"cw"`` ``(B, C, 1, W)``, ``"hc"``
        ``(B, C, H, 1)``, ``"hw"`` ``(B, 1, H, W)``.

    Example:
        >>> import torch
        >>> layer = TripletAttention(16)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        no_spatial: bool = False,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("TripletAttention", channels)
        check_odd("TripletAttention", "kernel_size", kernel_size)
        self.no_spatial = bool(no_spatial)
        self.cw = TripletGate(kernel_size=kernel_size, gate_layer=gate_layer)
        self.hc = TripletGate(kernel_size=kernel_size, gate_layer=gate_layer)
        self.hw = None if self.no_spatial else TripletGate(kernel_size=kernel_size, gate_layer=gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("TripletAttention", x, self.channels)
        # (B, H, C, W): pool over H, gate a (C, W) map; back to (B, C, 1, W).
        g_cw = self.cw(x.transpose(1, 2)).transpose(1, 2)
        # (B, W, H, C): pool over W, gate an (H, C) map; back to (B, C, H, 1).
        g_hc = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        if self.recording:
            self.emit("cw", g_cw)
            self.emit("hc", g_hc)
        if self.hw is None:
            return x * (g_cw + g_hc) * 0.5
        g_hw = self.hw(x)
        if self.recording:
            self.emit("hw", g_hw)
        return x * (g_cw + g_hc + g_hw) * (1.0 / 3.0)
