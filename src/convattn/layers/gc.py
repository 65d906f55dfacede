"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (Cao et al., ICCV Workshops 2019). https://arxiv.org/abs/1904.11492"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_choice, check_input, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["GlobalContext"]

_FUSIONS = ("add", "mul", "both")


@register_attn(
    "gc",
    kind="gate",
    paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, Cao et al., ICCV Workshops 2019",
)
class GlobalContext(RecordsAttention):
    """Global context block: attention pooling, a LayerNorm bottleneck, fusion by addition.

    Eq. 3 of the paper::

        z_i = x_i + W_v2 ReLU(LN(W_v1 Σ_j α_j x_j)),   α_j = softmax_j(W_k x_j)

    (1) context modelling: a 1×1 convolution ``W_k`` (C -> 1) and a softmax over the
    H·W positions give one pooling weight per position, shared by all queries;
    (2) transform: 1×1 conv C -> C·r, ``LayerNorm([C·r, 1, 1])``, ReLU, 1×1 conv
    C·r -> C; (3) fusion: broadcast addition (the paper's default and best), or
    ``x · σ(transform)`` ("mul"), or both (multiplication first, as the official code).

    Initialisation follows the official code: ``W_k`` Kaiming-normal (fan-in, ReLU)
    with zero bias, and the last 1×1 convolution of each transform zero, so with
    ``fusion="add"`` the block starts as the identity (with ``"mul"`` it starts as
    ``x / 2``).

    timm's ``GlobalContext`` is the same computation (timm's ``gca`` is
    ``fusion="add"``, its default ``gc`` is ``fusion="mul"``); it differs in its
    defaults (r = 1/8, LayerNorm ε = 1e-6, no zero init of the multiplicative branch).

    Args:
        channels: input channels C.
        rd_ratio: bottleneck ratio r as a fraction (paper: 1/16). The width is at
            least 2: a LayerNorm over a single channel outputs a constant, which
            would cut the transform off from its input below C = 32.
        rd_channels: bottleneck width, overriding ``rd_ratio``.
        rd_divisor: the bottleneck width is rounded to a multiple of this.
        fusion: ``"add"`` (paper), ``"mul"`` or ``"both"``.
        pooling: ``"attn"`` (the paper's attention pooling) or ``"avg"`` (global
            average pooling, the paper's ablation; it has no map to record).
        act_layer: activation inside the transform (paper: ReLU).
        gate_layer: gate of the multiplicative fusion (default sigmoid); only with
            ``fusion="mul"`` or ``"both"``.
        eps: ε of the LayerNorm.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the pooling weights α ``(B, 1, H, W)``.

    Example:
        >>> import torch
        >>> gc = GlobalContext(64)
        >>> x = torch.randn(2, 64, 7, 9)
        >>> torch.equal(gc(x), x)  # identity at initialisation
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        fusion: str = "add",
        pooling: str = "attn",
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_choice(name, "fusion", fusion, _FUSIONS)
        check_choice(name, "pooling", pooling, ("attn", "avg"))
        if gate_layer is not None and fusion == "add":
            raise ConfigError(f"{name} uses gate_layer only with fusion='mul' or 'both', got fusion='add'")
        rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        if rd_channels is not None and rd < 2:
            raise ConfigError(f"{name} expects rd_channels >= 2 (LayerNorm over one channel is constant), got {rd}")
        rd = max(rd, 2)
        self.fusion = fusion
        self.pooling = pooling
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=True) if pooling == "attn" else None
        act = get_layer(act_layer, owner=name, arg="act_layer")
        self.transform_mul = self._transform(channels, rd, act, eps) if fusion in ("mul", "both") else None
        self.transform_add = self._transform(channels, rd, act, eps) if fusion in ("add", "both") else None
        self.gate = (
            get_layer(gate_layer or "sigmoid", owner=name, arg="gate_layer")() if self.transform_mul else None
        )
        self.reset_parameters()

    @staticmethod
    def _transform(c: int, rd: int, act: type[nn.Module], eps: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c, rd, 1, bias=True),
            nn.LayerNorm([rd, 1, 1], eps=eps),
            act(),
            nn.Conv2d(rd, c, 1, bias=True),
        )

    def reset_parameters(self) -> None:
        if self.conv_attn is not None:
            nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_attn.bias)
        for t in (self.transform_mul, self.transform_add):
            if t is not None:
                t[0].reset_parameters()
                t[1].reset_parameters()
                nn.init.zeros_(t[3].weight)
                nn.init.zeros_(t[3].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        b, c, h, w = x.shape
        if self.conv_attn is not None:
            alpha = self.conv_attn(x).reshape(b, h * w, 1).softmax(dim=1)  # (B, HW, 1)
            if self.recording:
                self.emit("", alpha.reshape(b, 1, h, w))
            context = torch.bmm(x.reshape(b, c, h * w), alpha).reshape(b, c, 1, 1)
        else:
            context = x.mean((2, 3), keepdim=True)
        out = x
        if self.transform_mul is not None:
            out = out * self.gate(self.transform_mul(context))
        if self.transform_add is not None:
            out = out + self.transform_add(context)
        return out
