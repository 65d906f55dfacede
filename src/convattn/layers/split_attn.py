"""ResNeSt: Split-Attention Networks (Zhang et al., CVPR Workshops 2022). https://arxiv.org/abs/2004.08955"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._batchnorm import resolve_norm
from ._helpers import check_channels, check_input, check_odd, check_positive, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["SplitAttn"]


@register_attn("splat", kind="gate", paper="ResNeSt: Split-Attention Networks, Zhang et al., CVPR Workshops 2022")
class SplitAttn(RecordsAttention):
    """Split-attention convolution (ResNeSt's "splat" block, Sec. 3 of the paper).

    A grouped k×k convolution with ``cardinality · radix`` groups produces ``radix``
    splits ``U_1..U_R`` of C channels each (then BN, ReLU). Per cardinal group k the
    splits are summed and pooled, ``s^k = GAP(Σ_i U_i^k)``, passed through
    ``fc1 -> BN -> ReLU -> fc2`` (1×1 convolutions grouped by cardinality), and the
    r-Softmax turns the logits into weights across the splits,
    ``a_i^k(c) = exp(G_i^c(s^k)) / Σ_j exp(G_j^c(s^k))`` (a sigmoid when
    ``radix = 1``). The output is ``V^k = Σ_i a_i^k ⊙ U_i^k``, concatenated over k.

    The layout (splits radix-major, logits cardinal-major) and the widths follow the
    official code: the hidden width is ``max(C · radix · rd_ratio, 32)``. The layer is a
    convolution replacement that keeps width and resolution (``C -> C``, stride 1),
    registered as a ``gate``. It equals timm's ``SplitAttn`` with
    ``norm_layer=BatchNorm2d`` (as timm's ResNeSt builds it); timm rounds the hidden
    width to a multiple of 8 and reads ``rd_channels`` per split (``× radix``), while
    here ``rd_channels`` is the hidden width itself.

    Args:
        channels: input and output channels C (divisible by ``cardinality · radix``).
        kernel_size: the convolution's kernel size (odd).
        radix: number of splits R per cardinal group (paper: 2).
        cardinality: number of cardinal groups K (paper's ResNeSt-50: 1).
        rd_ratio: hidden width as a fraction of ``C · radix`` (paper: 1/4).
        rd_channels: hidden width, overriding ``rd_ratio`` and ``min_rd_channels``.
        rd_divisor: the hidden width is rounded to a multiple of this.
        min_rd_channels: floor of the hidden width (official code: 32).
        act_layer: activation after the convolution and in the attention MLP.
        norm_layer: norm after the convolution and ``fc1`` (batch norm, falling back
            to running statistics when a training batch has one value per channel).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the split weights ``(B, radix, C)``.

    Example:
        >>> import torch
        >>> splat = SplitAttn(64, radix=2, cardinality=2)
        >>> splat(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 3,
        radix: int = 2,
        cardinality: int = 1,
        rd_ratio: float = 1 / 4,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        min_rd_channels: int = 32,
        act_layer: str | type[nn.Module] = "relu",
        norm_layer: str | type[nn.Module] = "batchnorm",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_odd(name, "kernel_size", kernel_size)
        for arg, v in (("radix", radix), ("cardinality", cardinality)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} expects {arg} to be a positive int, got {v!r}")
        if channels % (radix * cardinality):
            raise ConfigError(
                f"{name} expects channels divisible by radix * cardinality = {radix * cardinality}, got {channels}"
            )
        if rd_channels is None:
            check_positive(name, "min_rd_channels", min_rd_channels)
            inter = max(reduced_channels(name, channels * radix, rd_ratio, None, rd_divisor), int(min_rd_channels))
        else:
            inter = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        if inter % cardinality:
            raise ConfigError(f"{name} expects a hidden width divisible by cardinality={cardinality}, got {inter}")
        self.radix, self.cardinality = radix, cardinality
        act = get_layer(act_layer, owner=name, arg="act_layer")
        norm = resolve_norm(get_layer(norm_layer, owner=name, arg="norm_layer"))
        mid = channels * radix
        self.conv = nn.Conv2d(
            channels, mid, kernel_size, padding=kernel_size // 2, groups=cardinality * radix, bias=False
        )
        self.bn0 = norm(mid)
        self.act0 = act()
        self.fc1 = nn.Conv2d(channels, inter, 1, groups=cardinality, bias=True)
        self.bn1 = norm(inter)
        self.act1 = act()
        self.fc2 = nn.Conv2d(inter, mid, 1, groups=cardinality, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in self.modules():
            if mod is not self and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        b, c, h, w = x.shape
        r, k = self.radix, self.cardinality
        u = self.act0(self.bn0(self.conv(x))).reshape(b, r, c, h, w)  # radix-major splits
        s = u.sum(1).mean((2, 3), keepdim=True)
        logits = self.fc2(self.act1(self.bn1(self.fc1(s))))  # (B, R·C, 1, 1), cardinal-major
        if r > 1:  # r-Softmax across the splits of each cardinal group
            a = logits.reshape(b, k, r, c // k).softmax(dim=2).transpose(1, 2).reshape(b, r, c)
        else:
            a = torch.sigmoid(logits).reshape(b, 1, c)
        if self.recording:
            self.emit("", a)
        return (u * a[..., None, None]).sum(1)
