"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks (Wang et al., CVPR 2020). https://arxiv.org/abs/1910.03151

Three registry entries:

- ``eca``: the paper's layer. Global average pooling, a 1-D convolution across the
  channel axis with the adaptive kernel size ``k = |log2(C)/γ + b/γ|_odd``, sigmoid.
- ``ceca``: the same with circular padding of the channel axis, so the first and
  last channels see each other (timm's ``CecaModule``).
- ``ecam``: timm's ``ecam`` (``EcaModule(use_mlp=True)``, a timm experiment, not
  in the paper): a 1×1 Conv1d lifting the pooled channel sequence to ``rd``
  feature maps, an activation, then the k-wide Conv1d back to one map, sigmoid.

Kernel size: the paper's rule (and its official code) takes ``t = int((log2 C + b) / γ)``
and adds one when ``t`` is even. For ``C >= 8`` this equals timm's; for ``C < 8`` the
paper gives ``k = 1`` where timm clamps to ``k >= 3``. convattn follows the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import (
    check_channels,
    check_input,
    check_odd,
    check_positive,
    check_ratio,
    get_layer,
    make_divisible,
)
from ._recording import RecordsAttention

__all__ = [
    "eca_kernel_size",
    "EfficientChannelAttn",
    "CircularEfficientChannelAttn",
    "EfficientChannelAttnMlp",
]

_PAPER = "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks, Wang et al., CVPR 2020"


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The paper's adaptive kernel size ``ψ(C) = |log2(C)/γ + b/γ|_odd`` (nearest odd number).

    Example:
        >>> [eca_kernel_size(c) for c in (4, 16, 64, 256, 512, 2048)]
        [1, 3, 3, 5, 5, 7]
    """
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class _EcaBase(RecordsAttention):
    """Shared constructor checks and the pooled-sequence gate."""

    def _setup(self, channels: int, kernel_size: int | None, gamma: float, beta: float) -> int:
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        if kernel_size is None:
            check_positive(name, "gamma", gamma)
            if isinstance(beta, bool) or not isinstance(beta, (int, float)):
                raise ConfigError(f"{name} expects beta to be a number, got {beta!r}")
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_odd(name, "kernel_size", kernel_size)
        self.kernel_size = kernel_size
        return kernel_size

    def _conv(self, y: torch.Tensor) -> torch.Tensor:  # (B, 1, C) -> (B, 1, C) logits
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        y = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C): the channel descriptor as a 1-D sequence
        w = self.gate(self._conv(y)).squeeze(1)  # (B, C)
        if self.recording:
            self.emit("", w)
        return x * w[:, :, None, None]


@register_attn("eca", kind="gate", paper=_PAPER)
class EfficientChannelAttn(_EcaBase):
    """Efficient Channel Attention: ``x · σ(conv1d_k(GAP(x)))`` over the channel axis.

    Args:
        channels: input channels C.
        kernel_size: width k of the 1-D convolution (odd); ``None`` derives it from C
            with the paper's ``k = |log2(C)/γ + b/γ|_odd`` (see :func:`eca_kernel_size`).
        gamma: γ of the adaptive kernel size (paper: 2).
        beta: b of the adaptive kernel size (paper: 1).
        gate_layer: the gate σ.

    The convolution has no bias and zero padding, as in the paper's code. timm's
    ``EcaModule`` is the same layer for ``C >= 8``; for ``C < 8`` timm clamps ``k`` to 3.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the channel weights ``(B, C)``.

    Example:
        >>> import torch
        >>> eca = EfficientChannelAttn(64)
        >>> eca.kernel_size
        3
        >>> eca(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        k = self._setup(channels, kernel_size, gamma, beta)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.gate = get_layer(gate_layer, owner=type(self).__name__, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def _conv(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv(y)


@register_attn("ceca", kind="gate", paper=_PAPER + " (circular padding variant, as in timm)")
class CircularEfficientChannelAttn(_EcaBase):
    """ECA with circular padding of the channel axis (timm's ``CecaModule``).

    Channels have no order, so the zero padding at the two ends of the channel axis
    is arbitrary; padding circularly lets every channel see k neighbours.

    Args:
        channels: input channels C.
        kernel_size: width k of the 1-D convolution (odd, ``k // 2 <= C``); ``None``
            uses the paper's adaptive size.
        gamma: γ of the adaptive kernel size.
        beta: b of the adaptive kernel size.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the channel weights ``(B, C)``.

    Example:
        >>> import torch
        >>> ceca = CircularEfficientChannelAttn(32)
        >>> ceca(torch.randn(2, 32, 5, 4)).shape
        torch.Size([2, 32, 5, 4])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        k = self._setup(channels, kernel_size, gamma, beta)
        if (k - 1) // 2 > channels:
            raise ConfigError(
                f"{type(self).__name__} expects kernel_size // 2 <= channels for circular padding, "
                f"got kernel_size={k} with channels={channels}"
            )
        self.padding = (k - 1) // 2
        self.conv = nn.Conv1d(1, 1, k, padding=0, bias=False)
        self.gate = get_layer(gate_layer, owner=type(self).__name__, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def _conv(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(y, (self.padding, self.padding), mode="circular"))


@register_attn("ecam", kind="gate", paper=_PAPER + " (timm's MLP variant 'ecam', not in the paper)")
class EfficientChannelAttnMlp(_EcaBase):
    """timm's ``ecam``: ECA whose channel sequence goes through a small 1-D MLP.

    ``w = σ(conv1d_k(δ(conv1d_1(GAP(x)))))``: the first Conv1d (kernel 1, with bias)
    lifts the pooled sequence ``(B, 1, C)`` to ``rd`` maps, the second (kernel k, with
    bias, zero padding) mixes neighbouring channels back to one map. Widths follow
    timm: ``rd = make_divisible(C · rd_ratio, rd_divisor)``.

    Args:
        channels: input channels C.
        kernel_size: width k of the second Conv1d; ``None`` uses the adaptive size.
        gamma: γ of the adaptive kernel size.
        beta: b of the adaptive kernel size.
        rd_ratio: hidden width as a fraction of C (timm: 1/8).
        rd_channels: hidden width, overriding ``rd_ratio``.
        rd_divisor: the hidden width is rounded to a multiple of this (timm: 8).
        act_layer: activation δ between the two Conv1d.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the channel weights ``(B, C)``.

    Example:
        >>> import torch
        >>> ecam = EfficientChannelAttnMlp(64)
        >>> ecam.conv1.out_channels
        8
        >>> ecam(torch.randn(2, 64, 3, 4)).shape
        torch.Size([2, 64, 3, 4])
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        rd_ratio: float = 1 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: str | type[nn.Module] = "relu",
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        k = self._setup(channels, kernel_size, gamma, beta)
        if rd_channels is None:
            check_ratio(name, "rd_ratio", rd_ratio)
            check_positive(name, "rd_divisor", rd_divisor)
            rd = make_divisible(channels * rd_ratio, rd_divisor)
        else:
            check_positive(name, "rd_channels", rd_channels)
            rd = int(rd_channels)
        self.conv1 = nn.Conv1d(1, rd, 1, bias=True)
        self.act = get_layer(act_layer, owner=name, arg="act_layer")()
        self.conv2 = nn.Conv1d(rd, 1, k, padding=(k - 1) // 2, bias=True)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()

    def _conv(self, y: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(y)))
