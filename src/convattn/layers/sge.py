"""Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks (Li, Hu, Yang; 2019). https://arxiv.org/abs/1905.09646"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, check_positive, get_layer
from ._recording import RecordsAttention
from .modes import is_fx_proxy

__all__ = ["SpatialGroupEnhance"]


@register_attn(
    "sge",
    kind="gate",
    paper="Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks, Li et al., arXiv 2019",
)
class SpatialGroupEnhance(RecordsAttention):
    """Spatial Group-wise Enhance: each group gates its positions by their similarity to the group's mean.

    The channels are split into G groups. Within a group, with ``x_i`` the
    ``C/G``-vector at position ``i`` (Eq. 1-5)::

        g = 1/m Σ_i x_i,     c_i = g · x_i,
        ĉ_i = (c_i - μ_c) / (σ_c + ε),     a_i = γ ĉ_i + β,     x̂_i = x_i · σ(a_i)

    with one ``(γ, β)`` pair per group, initialised to ``(0, 1)`` as in the authors'
    code. ``σ_c`` is the unbiased standard deviation over the ``m = H·W`` positions and
    ``ε = 1e-5`` is added to it (the authors' code); on a ``1×1`` map ``ĉ = 0``.

    Args:
        channels: input channels C, divisible by ``groups``.
        groups: number of groups G (the paper uses 64 in ResNet-50; 8 here so that
            the default works from 8 channels up).
        eps: ε added to the standard deviation.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the gates ``(B, G, H, W)``.

    Example:
        >>> import torch
        >>> layer = SpatialGroupEnhance(16, groups=8)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 8,
        eps: float = 1e-5,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("SpatialGroupEnhance", channels)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0 or channels % groups:
            raise ConfigError(
                f"SpatialGroupEnhance expects groups to be a positive int dividing channels={channels}, got {groups!r}"
            )
        check_positive("SpatialGroupEnhance", "eps", eps)
        self.groups = groups
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.empty(1, groups, 1, 1))
        self.gate = get_layer(gate_layer, owner="SpatialGroupEnhance", arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.ones_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("SpatialGroupEnhance", x, self.channels)
        b, c, h, w = x.shape
        xg = x.reshape(b, self.groups, c // self.groups, h, w)
        sim = (xg * xg.mean(dim=(3, 4), keepdim=True)).sum(dim=2)  # (B, G, H, W)
        if is_fx_proxy(x) or h * w > 1:  # an FX graph assumes H·W > 1
            sim = sim - sim.mean(dim=(2, 3), keepdim=True)
            sim = sim / (sim.std(dim=(2, 3), keepdim=True) + self.eps)
        else:
            sim = torch.zeros_like(sim)
        gate = self.gate(sim * self.weight + self.bias)
        if self.recording:
            self.emit("", gate)
        return (xg * gate.unsqueeze(2)).reshape(b, c, h, w)
