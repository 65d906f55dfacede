"""Squeeze-and-Excitation Networks (Hu, Shen, Sun; CVPR 2018). https://arxiv.org/abs/1709.01507"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_input, get_layer, reduced_channels
from ._ops import call
from ._recording import RecordsAttention
from ._se_ops import se_blend_ops, se_ops
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
    run the same formula in PyTorch ops. Inside ``IdentityBlend`` (``identity_init``) the same kernels
    compute the blend ``x + γ (SE(x) − x)`` (:meth:`forward_blended`), at no extra pass.

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
        out = self._kernel(x, None)
        if out is not None:
            return out
        # The 1×1 convolutions applied as matrix products on the (B, C) descriptor: same
        # weights and result as the convolutions, less per-call overhead on CPU.
        z = x.mean((2, 3))
        z = self.act(F.linear(z, self.fc1.weight.flatten(1), self.fc1.bias))
        w = self.gate(F.linear(z, self.fc2.weight.flatten(1), self.fc2.bias))
        if self.recording:
            self.emit("", w)
        return x * w[:, :, None, None]

    def forward_blended(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor | None:
        """The identity blend ``x + γ · (SE(x) − x)`` (``models.IdentityBlend``) computed by the kernels
        (``x · (1 + γ (g − 1))``, no extra pass), recording the gates as :meth:`forward` does; ``None``
        where the kernels cannot run (then the caller blends around :meth:`forward`)."""
        check_input("SqueezeExcite", x, self.channels)
        if not isinstance(gamma, torch.Tensor) or gamma.numel() != 1:
            return None
        return self._kernel(x, gamma)

    def _kernel(self, x: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor | None:
        """The whole-layer kernels' output (the identity blend with ``gamma``) where they can run, else ``None``.
        Modules are read from ``_modules`` once: each ``nn.Module`` attribute lookup costs about a microsecond,
        which is most of a small input's time."""
        modules = self._modules
        if type(modules["act"]) is not nn.ReLU or type(modules["gate"]) is not nn.Sigmoid:
            return None
        fc1, fc2 = modules["fc1"], modules["fc2"]
        params = (fc1.weight, fc1.bias, fc2.weight, fc2.bias) if gamma is None else (
            gamma, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        if not kernels_may_run(x, params):
            return None
        ops = se_ops() if gamma is None else se_blend_ops()
        if ops is None:
            return None
        out, g, _, _ = call(ops.forward.default, x, *params)
        if self.recording:
            self.emit("", g)
        return out


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
