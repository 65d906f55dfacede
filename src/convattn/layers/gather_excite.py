"""Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks (Hu et al., NeurIPS 2018). https://arxiv.org/abs/1810.12348"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._batchnorm import resolve_norm
from ._helpers import check_channels, check_input, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["GatherExcite"]


@register_attn(
    "ge",
    kind="gate",
    paper="Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks, Hu et al., NeurIPS 2018",
)
class GatherExcite(RecordsAttention):
    """Gather-Excite: ``x ⊙ σ(interp(ξ_G(x)))``.

    The gather ``ξ_G`` aggregates features over a spatial *extent* e: the whole map
    (``extent=0``, global) or windows with stride e (output ``⌈H/e⌉ × ⌈W/e⌉``).

    - θ⁻ (``extra_params=False``): parameter-free average pooling, global or with a
      ``(2e−1)×(2e−1)`` window, stride e, padding ``e−1``, padding not counted (timm's
      reading; the paper does not fix the window).
    - θ (``extra_params=True``): ``log2(e)`` depthwise 3×3 stride-2 convolutions, each
      followed by ``norm_layer``, with ``act_layer`` between them.
    - θ⁺ = θ with ``use_mlp=True``: a 1×1-conv bottleneck ``C → C·r → C`` (as SE)
      on the gathered features.

    The excite operator resizes the gathered map back to ``H × W`` by nearest-neighbour
    interpolation and gates the input with σ.

    Differences from timm 1.0.31's ``GatherExcite``: the defaults (global extent,
    θ⁻, MLP) give timm's ``ge``, which is SE with r = 1/16. Global extent *with*
    parameters needs a depthwise kernel the size of the feature map; convattn never
    fixes H×W at construction, so that combination raises ``ConfigError`` (timm takes a
    ``feat_size``). timm's constructor itself is broken in 1.0.31 (it unpacks its
    ``device``/``dtype`` dict positionally and raises ``TypeError``); its forward,
    reached by building the module by hand, equals this layer's.

    Args:
        channels: input channels C.
        extent: 0 for global, else the gather stride e (>= 2; a power of two with
            ``extra_params``).
        extra_params: gather with depthwise convolutions (θ) instead of pooling (θ⁻).
        use_mlp: pass the gathered features through the SE-style bottleneck (θ⁺).
        rd_ratio: bottleneck ratio of the MLP as a fraction.
        rd_channels: bottleneck width, overriding ``rd_ratio``.
        rd_divisor: the bottleneck width is rounded to a multiple of this.
        act_layer: activation of the MLP and between the gather convolutions.
        norm_layer: norm after each gather convolution (default batch norm); only
            with ``extra_params``. Batch norm falls back to running statistics when a
            training batch has one value per channel.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the gate at the gathered resolution
        ``(B, C, ⌈H/e⌉, ⌈W/e⌉)`` (``(B, C, 1, 1)`` for global extent).

    Example:
        >>> import torch
        >>> ge = GatherExcite(64, extent=4, extra_params=True)
        >>> ge(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        extent: int = 0,
        extra_params: bool = False,
        use_mlp: bool = True,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        norm_layer: str | type[nn.Module] | None = None,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or extent == 1:
            raise ConfigError(f"{name} expects extent to be 0 (global) or an int >= 2, got {extent!r}")
        if extra_params and extent == 0:
            raise ConfigError(
                f"{name} expects extent >= 2 with extra_params=True: a global gather with parameters "
                f"needs a kernel of the feature map's size, which convattn never fixes at construction"
            )
        if extra_params and extent & (extent - 1):
            raise ConfigError(f"{name} expects extent to be a power of two with extra_params=True, got {extent}")
        if norm_layer is not None and not extra_params:
            raise ConfigError(f"{name} uses norm_layer only with extra_params=True")
        self.extent = extent
        act = get_layer(act_layer, owner=name, arg="act_layer")
        if extra_params:
            norm = resolve_norm(get_layer(norm_layer or "batchnorm", owner=name, arg="norm_layer"))
            layers: list[nn.Module] = []
            steps = int(math.log2(extent))
            for i in range(steps):
                layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                           norm(channels)]
                if i < steps - 1:
                    layers.append(act())
            self.gather: nn.Module | None = nn.Sequential(*layers)
        else:
            self.gather = None
        if use_mlp:
            rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
            self.mlp: nn.Module = nn.Sequential(
                nn.Conv2d(channels, rd, 1, bias=True), act(), nn.Conv2d(rd, channels, 1, bias=True)
            )
        else:
            self.mlp = nn.Identity()
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        if self.gather is not None:
            g = self.gather(x)
        elif self.extent == 0:
            g = x.mean((2, 3), keepdim=True)
        else:
            e = self.extent
            g = F.avg_pool2d(x, 2 * e - 1, stride=e, padding=e - 1, count_include_pad=False)
        w = self.gate(self.mlp(g))
        if self.recording:
            self.emit("", w)
        if self.extent != 0:  # a global gather gives (B, C, 1, 1), which broadcasts
            w = F.interpolate(w, size=x.shape[-2:], mode="nearest")
        return x * w
