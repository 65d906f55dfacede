"""Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional Networks (Roy, Navab, Wachinger; MICCAI 2018). https://arxiv.org/abs/1803.02579"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_choice, check_input, get_layer, reduced_channels
from ._recording import RecordsAttention

__all__ = ["SCSE"]

_COMBINE = ("max", "add", "mul")


@register_attn(
    "scse",
    kind="gate",
    paper="Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional Networks, Roy et al., "
    "MICCAI 2018",
)
class SCSE(RecordsAttention):
    """Concurrent spatial and channel squeeze & excitation (scSE).

    - cSE (channel): ``x̂_cSE = x · σ(W_2 δ(W_1 GAP(x)))``, an SE bottleneck of ratio r;
    - sSE (spatial): ``x̂_sSE = x · σ(W_sq ⋆ x)``, a 1×1 convolution ``C -> 1``;
    - scSE combines the two recalibrated maps element-wise: ``"max"`` (max-out, the
      best of the combinations compared in the journal version, Roy et al.,
      IEEE TMI 2019, and the official code's choice), ``"add"`` (the MICCAI
      paper's sum) or ``"mul"``.

    Args:
        channels: input channels C.
        rd_ratio: reduction ratio r of cSE as a fraction (official code: 1/2).
        rd_channels: cSE bottleneck width, overriding ``rd_ratio``.
        rd_divisor: the bottleneck width is rounded to a multiple of this.
        combine: ``"max"``, ``"add"`` or ``"mul"``.
        act_layer: activation δ of cSE.
        gate_layer: the gate σ of both branches.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``"channel"`` ``(B, C)`` and
        ``"spatial"`` ``(B, 1, H, W)``, the two gates.

    Example:
        >>> import torch
        >>> scse = SCSE(64)
        >>> scse(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 2,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        combine: str = "max",
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_choice(name, "combine", combine, _COMBINE)
        self.combine = combine
        rd = reduced_channels(name, channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = get_layer(act_layer, owner=name, arg="act_layer")()
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)
        self.conv_s = nn.Conv2d(channels, 1, 1, bias=True)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for mod in (self.fc1, self.fc2, self.conv_s):
            mod.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        w_c = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))  # (B, C, 1, 1)
        w_s = self.gate(self.conv_s(x))  # (B, 1, H, W)
        if self.recording:
            self.emit("channel", w_c.flatten(1))
            self.emit("spatial", w_s)
        if self.combine == "max":
            # max(x·w_c, x·w_s) written as x·w_s + ReLU(x·(w_c − w_s)): same values, and its
            # backward is about 3× faster on CPU than torch.maximum's.
            return x * w_s + torch.relu(x * (w_c - w_s))
        if self.combine == "add":
            return x * (w_c + w_s)
        return x.square() * (w_c * w_s)
