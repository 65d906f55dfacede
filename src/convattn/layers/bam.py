"""BAM: Bottleneck Attention Module (Park, Woo, Lee, Kweon; BMVC 2018). https://arxiv.org/abs/1807.06514"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._batchnorm import resolve_norm
from ._helpers import check_channels, check_input, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["BAM"]


@register_attn("bam", kind="gate", paper="BAM: Bottleneck Attention Module, Park et al., BMVC 2018")
class BAM(RecordsAttention):
    """Bottleneck attention module: ``F' = F + F ⊗ σ(M_c(F) + M_s(F))``.

    Eq. 1–4 of the paper:

    - channel branch ``M_c(F) = BN(MLP(AvgPool(F)))``, an MLP ``C -> C·r -> C`` with
      ReLU, then batch norm, giving ``(B, C, 1, 1)``;
    - spatial branch ``M_s(F) = BN(f_3^{1×1}(f_2^{3×3}(f_1^{3×3}(f_0^{1×1}(F)))))``:
      a 1×1 reduction to ``C·r``, ``num_dilated`` dilated 3×3 convolutions (d = 4),
      a 1×1 convolution to one map, then batch norm, giving ``(B, 1, H, W)``;
      batch norm and ReLU follow each of the inner convolutions, as in the official
      code;
    - the two are **added** with broadcasting to ``(B, C, H, W)`` before the sigmoid,
      and the result refines the input residually.

    The paper adds the branches (Eq. 1, "element-wise summation"); the official
    code and several re-implementations multiply them, which is a different module.
    Following Eq. 3, the channel MLP has no inner norm and batch norm is applied
    at its output (the official code puts a BatchNorm1d inside the MLP instead).

    Args:
        channels: input channels C.
        rd_ratio: reduction ratio r of both branches as a fraction (paper: 1/16).
        rd_channels: bottleneck width, overriding ``rd_ratio``.
        rd_divisor: the bottleneck width is rounded to a multiple of this.
        dilation: dilation d of the 3×3 convolutions (paper: 4).
        num_dilated: number of dilated 3×3 convolutions (paper: 2).
        act_layer: activation inside both branches.
        norm_layer: the norms (batch norm; the channel branch's falls back to running
            statistics when a training batch holds a single sample).
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the branch outputs before the
        sigmoid: ``"channel"`` ``(B, C)`` and ``"spatial"`` ``(B, 1, H, W)``.

    Example:
        >>> import torch
        >>> bam = BAM(64)
        >>> bam(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        dilation: int = 4,
        num_dilated: int = 2,
        act_layer: str | type[nn.Module] = "relu",
        norm_layer: str | type[nn.Module] = "batchnorm",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        for arg, v, low in (("dilation", dilation, 1), ("num_dilated", num_dilated, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} expects {arg} to be an int >= {low}, got {v!r}")
        rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        act = get_layer(act_layer, owner=name, arg="act_layer")
        norm = resolve_norm(get_layer(norm_layer, owner=name, arg="norm_layer"))
        self.channel_fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.channel_act = act()
        self.channel_fc2 = nn.Conv2d(rd, channels, 1, bias=True)
        self.channel_bn = norm(channels)
        spatial: list[nn.Module] = [nn.Conv2d(channels, rd, 1, bias=True), norm(rd), act()]
        for _ in range(num_dilated):
            spatial += [nn.Conv2d(rd, rd, 3, padding=dilation, dilation=dilation, bias=True), norm(rd), act()]
        spatial += [nn.Conv2d(rd, 1, 1, bias=True), norm(1)]
        self.spatial = nn.Sequential(*spatial)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in self.modules():
            if mod is not self and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        m_c = self.channel_bn(self.channel_fc2(self.channel_act(self.channel_fc1(x.mean((2, 3), keepdim=True)))))
        m_s = self.spatial(x)
        if self.recording:
            self.emit("channel", m_c.flatten(1))
            self.emit("spatial", m_s)
        return x + x * self.gate(m_c + m_s)
