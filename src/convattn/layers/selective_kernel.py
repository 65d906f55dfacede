"""Selective Kernel Networks (Li, Wang, Hu, Yang; CVPR 2019). https://arxiv.org/abs/1903.06586"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._batchnorm import resolve_norm
from ._helpers import check_channels, check_input, check_odd, check_positive, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["SelectiveKernel"]


@register_attn("sk", kind="gate", paper="Selective Kernel Networks, Li et al., CVPR 2019")
class SelectiveKernel(RecordsAttention):
    """Selective Kernel convolution: Split, Fuse, Select (Sec. 3.1 of the paper).

    - Split: M branches ``U_m = ReLU(BN(conv_m(x)))``, grouped convolutions with
      kernel sizes ``kernel_sizes`` (paper: 3×3 and 5×5); with ``keep_3x3`` a k×k
      kernel is a 3×3 kernel with dilation ``(k−1)/2`` (the paper's 5×5 is a dilated
      3×3, Sec. 3.1).
    - Fuse: ``U = Σ_m U_m``, ``s = GAP(U)``, ``z = ReLU(BN(W s))`` with
      ``W ∈ R^{d×C}``, ``d = max(C·r, L)`` (paper: r = 1/16, L = 32).
    - Select: per channel a softmax across the branches,
      ``a_m = exp(A_m z) / Σ_k exp(A_k z)``, and ``V = Σ_m a_m · U_m``.

    The layer is a convolution replacement that keeps width and resolution
    (``C -> C``, stride 1), so it is registered as a ``gate``. It follows timm's
    ``SelectiveKernel`` except for two defaults: the paper's ``d >= L = 32``
    (timm rounds ``C·r`` to a multiple of 8 with no floor of 32), and no input split
    (timm splits the input channels across the branches, ``split_input=True``, a
    timm modification to save parameters). With ``split_input=True`` and equal
    widths the two give identical outputs (tested).

    Args:
        channels: input and output channels C.
        kernel_sizes: one odd kernel size per branch (paper: ``(3, 5)``).
        groups: groups of every branch convolution; ``None`` uses the paper's 32,
            reduced to ``gcd(32, C)`` (and the split width) so any width works.
        keep_3x3: build k×k branches as dilated 3×3 convolutions (paper: yes).
        split_input: split the input channels across the branches (timm).
        rd_ratio: reduction ratio r as a fraction (paper: 1/16).
        rd_channels: the width d, overriding ``rd_ratio`` and ``min_rd_channels``.
        rd_divisor: ``C·r`` is rounded to a multiple of this.
        min_rd_channels: the floor L of d (paper: 32).
        act_layer: activation of the branches and the fuse layer.
        norm_layer: norm of the branches and the fuse layer (batch norm, falling back
            to running statistics when a training batch has one value per channel).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the branch weights ``(B, M, C)``.

    Example:
        >>> import torch
        >>> sk = SelectiveKernel(64)
        >>> sk(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
        >>> sk.fc_reduce.out_channels  # d = max(64 / 16, 32)
        32
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_sizes: Sequence[int] = (3, 5),
        groups: int | None = None,
        keep_3x3: bool = True,
        split_input: bool = False,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        min_rd_channels: int = 32,
        act_layer: str | type[nn.Module] = "relu",
        norm_layer: str | type[nn.Module] = "batchnorm",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        if isinstance(kernel_sizes, int) or len(kernel_sizes) < 2:
            raise ConfigError(f"{name} expects at least two kernel_sizes, got {kernel_sizes!r}")
        for k in kernel_sizes:
            check_odd(name, "kernel_sizes", k)
        self.num_paths = m = len(kernel_sizes)
        if split_input and channels % m:
            raise ConfigError(f"{name} with split_input expects channels divisible by {m} branches, got {channels}")
        self.split_input = split_input
        in_ch = channels // m if split_input else channels
        if groups is None:
            groups = math.gcd(32, math.gcd(in_ch, channels))
        else:
            check_positive(name, "groups", groups)
            if in_ch % groups or channels % groups:
                raise ConfigError(
                    f"{name} expects groups to divide the branch input ({in_ch}) and output ({channels}) "
                    f"channels, got groups={groups}"
                )
        self.groups = groups
        act = get_layer(act_layer, owner=name, arg="act_layer")
        norm = resolve_norm(get_layer(norm_layer, owner=name, arg="norm_layer"))
        paths = []
        for k in kernel_sizes:
            kk, dil = (3, (k - 1) // 2) if keep_3x3 else (k, 1)
            pad = dil * (kk - 1) // 2
            paths.append(nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_ch, channels, kk, padding=pad, dilation=dil, groups=groups, bias=False),
                bn=norm(channels),
                act=act(),
            )))
        self.paths = nn.ModuleList(paths)
        if rd_channels is None:
            check_positive(name, "min_rd_channels", min_rd_channels)
            d = max(reduced_channels(name, channels, rd_ratio, None, rd_divisor), int(min_rd_channels))
        else:
            d = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        self.fc_reduce = nn.Conv2d(channels, d, 1, bias=False)
        self.bn = norm(d)
        self.act = act()
        self.fc_select = nn.Conv2d(d, channels * m, 1, bias=False)  # the A, B, ... matrices, branch-major
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in self.modules():
            if mod is not self and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        b = x.shape[0]
        if self.split_input:
            parts = torch.chunk(x, self.num_paths, dim=1)
            u = torch.stack([p(xi) for p, xi in zip(self.paths, parts)], dim=1)  # (B, M, C, H, W)
        else:
            u = torch.stack([p(x) for p in self.paths], dim=1)
        s = u.sum(1).mean((2, 3), keepdim=True)  # Fuse: GAP of Σ_m U_m
        z = self.act(self.bn(self.fc_reduce(s)))
        a = self.fc_select(z).reshape(b, self.num_paths, self.channels).softmax(dim=1)  # Select
        if self.recording:
            self.emit("", a)
        return (u * a[..., None, None]).sum(1)
