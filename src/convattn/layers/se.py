"""Squeeze-and-Excitation Networks (Hu, Shen, Sun; CVPR 2018). https://arxiv.org/abs/1709.01507"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_input, get_layer, reduced_channels
from ._ops import call
from ._recording import RecordsAttention
from ._se_ops import se_ops
from .modes import kernels_may_run

__all__ = ["SqueezeExcite"]


@register_attn("se", kind="gate", paper="Squeeze-and-Excitation Networks, Hu et al., CVPR 2018")
class SqueezeExcite(RecordsAttention):
    """Squeeze-and-Excitation: ``x · σ(W₂ δ(W₁ GAP(x)))``.

    Args:
        channels: input channels C.
        rd_ratio: reduction ratio r as a fraction (the paper's r = 16 is ``1/16``).
        rd_channels: bottleneck width, overriding ``rd_ratio``.
        rd_divisor: the bottleneck width is rounded to a multiple of this.
        act_layer: activation δ between the two FC layers.
        gate_layer: the gate σ.
        bias: whether the FC layers (1×1 convolutions) have biases.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the channel weights ``(B, C)``.

    Speed: with a ReLU and a sigmoid (the defaults), CPU float32/float64 input (with parameters of
    the same dtype) runs the whole-layer C++ kernels of ``csrc/se_cpu.cpp``, the custom op
    ``torch.ops.convattn_se.forward`` (built on first use or by ``convattn kernels build``, see
    :mod:`convattn.layers.kernels`; the formulas are in :mod:`convattn.layers._se_ops`), which read each sample once per direction. Gradients of
    gradients, ``torch.func``, ``torch.compile``, tracing, autocast and other dtypes or devices
    run the same formula in PyTorch ops.

    Example:
        >>> import torch
        >>> se = SqueezeExcite(64, rd_ratio=1 / 16)
        >>> se(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SqueezeExcite", channels)
        rd = reduced_channels("SqueezeExcite", channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=bias)
        self.act = get_layer(act_layer, owner="SqueezeExcite", arg="act_layer")()
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=bias)
        self.gate = get_layer(gate_layer, owner="SqueezeExcite", arg="gate_layer")()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("SqueezeExcite", x, self.channels)
        params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        if type(self.act) is nn.ReLU and type(self.gate) is nn.Sigmoid and kernels_may_run(x, params):
            ops = se_ops()
            if ops is not None:
                out, g, _, _ = call(ops.forward.default, x, *params)
                if self.recording:
                    self.emit("", g)
                return out
        # The 1×1 convolutions applied as matrix products on the (B, C) descriptor: same
        # weights and result as the convolutions, less per-call overhead on CPU.
        z = x.mean((2, 3))
        z = self.act(F.linear(z, self.fc1.weight.flatten(1), self.fc1.bias))
        w = self.gate(F.linear(z, self.fc2.weight.flatten(1), self.fc2.bias))
        if self.recording:
            self.emit("", w)
        return x * w[:, :, None, None]


@register_attn(
    "ese",
    kind="gate",
    paper="CenterMask: Real-Time Anchor-Free Instance Segmentation, Lee & Park, CVPR 2020 (effective SE)",
)
class EffectiveSqueezeExcite(RecordsAttention):
    """Effective Squeeze-Excitation (eSE, VoVNet-v2): ``x · hσ(W_C GAP(x))``.

    From *CenterMask: Real-Time Anchor-Free Instance Segmentation* (Lee & Park,
    CVPR 2020), https://arxiv.org/abs/1911.06667, Eq. 1–2. SE's two FC layers
    lose channel information in the C/r bottleneck; eSE keeps one FC layer of full
    width ``C -> C`` (with bias) and gates with the hard sigmoid
    ``hσ(z) = ReLU6(z + 3) / 6``. Same as timm's ``EffectiveSEModule`` (whose
    experimental ``add_maxpool`` option is not offered).

    Args:
        channels: input channels C.
        gate_layer: the gate (paper: hard sigmoid).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the channel weights ``(B, C)``.

    Example:
        >>> import torch
        >>> ese = EffectiveSqueezeExcite(64)
        >>> ese(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int, *, gate_layer: str | type[nn.Module] = "hard_sigmoid") -> None:
        super().__init__()
        self.channels = check_channels("EffectiveSqueezeExcite", channels)
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        self.gate = get_layer(gate_layer, owner="EffectiveSqueezeExcite", arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("EffectiveSqueezeExcite", x, self.channels)
        w = self.gate(self.fc(x.mean((2, 3), keepdim=True)))
        if self.recording:
            self.emit("", w.flatten(1))
        return x * w


__all__ += ["EffectiveSqueezeExcite"]
