"""Dual Attention Network for Scene Segmentation (Fu, Liu, Tian, Li, Bao, Fang, Lu; CVPR 2019). https://arxiv.org/abs/1809.02983

Position attention module (PAM, Eq. 1–2)::

    s_ji = exp(B_i · C_j) / Σ_i exp(B_i · C_j)        B, C: 1×1 convs to C/8
    E_j  = α Σ_i s_ji D_i + A_j                        D: 1×1 conv to C, α = 0 at init

Channel attention module (CAM, Eq. 3–4), computed from the input directly::

    x_ji = softmax_i(max_k(A_j · A_k) − A_j · A_i)     (the "energy_new" of the authors' code)
    E_j  = β Σ_i x_ji A_i + A_j                         β = 0 at init

In Eq. 1 position j attends with C_j over the B_i, so the ``query`` convolution
gives the paper's C and ``key`` its B (the softmax runs over the key positions,
as in the authors' code). The subtraction from the row maximum follows the authors' code; the paper's
Eq. 3 writes ``exp(A_i · A_j)``. The dual layer adds both attention outputs to
the input once: ``x + α·PAM(x) + β·CAM(x)`` (the paper's head sums the two
modules' outputs after further convolutions; this layer is the plug-in form).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attn
from ._helpers import check_channels, check_input
from ._recording import RecordsAttention
from .self_attn import SelfAttention

__all__ = ["PositionAttention", "ChannelAttention", "DualAttention"]

_PAPER = "Dual Attention Network for Scene Segmentation, Fu et al., CVPR 2019"


@register_attn("danet_pam", kind="gate", paper=_PAPER)
class PositionAttention(SelfAttention):
    """DANet position attention module: ``x + α · Σ_i softmax(QᵢKⱼ) Vᵢ`` over H×W positions.

    The same computation as SAGAN's self-attention (C/8 query/key, C value, no
    logit scaling, a zero-initialised residual weight), so it is that layer with
    the value projection and biases fixed on; ``gamma`` plays the paper's α.
    Fused scaled-dot-product attention (memory O(HW)) unless recording.

    Args:
        channels: input channels C.
        rd_ratio: query/key width as a fraction of C (``1/8`` in the paper).
        rd_channels: query/key width, overriding ``rd_ratio``.
        rd_divisor: the query/key width is rounded to a multiple of this.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``(B, HW, HW)``.

    Example:
        >>> import torch
        >>> pam = PositionAttention(64)
        >>> x = torch.randn(2, 64, 7, 9)
        >>> torch.equal(pam(x), x)  # α = 0 at initialisation
        True
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__(
            channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor, value_proj=True, bias=True
        )


@register_attn("danet_cam", kind="gate", paper=_PAPER)
class ChannelAttention(RecordsAttention):
    """DANet channel attention module: ``x + β · softmax(max(XXᵀ) − XXᵀ) X`` over channels.

    The C×C attention is computed from the input itself (no projections), so the
    module works at any H×W; its only parameter is β.

    Args:
        channels: input channels C.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``(B, C, C)``.

    Example:
        >>> import torch
        >>> cam = ChannelAttention(64)
        >>> cam(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = check_channels(type(self).__name__, channels)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gamma)

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention output ``Σ_i x_ji A_i`` as ``(B, C, H, W)`` and the ``(B, C, C)`` weights."""
        flat = x.flatten(2)  # (B, C, N)
        energy = torch.matmul(flat, flat.transpose(1, 2))
        attn = (energy.amax(-1, keepdim=True) - energy).softmax(-1)
        return torch.matmul(attn, flat).view_as(x), attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        out, attn = self.attend(x)
        if self.recording:
            self.emit("", attn)
        return x + self.gamma * out


@register_attn("danet", kind="gate", paper=_PAPER)
class DualAttention(RecordsAttention):
    """DANet dual attention: ``x + α·PAM(x) + β·CAM(x)``, the identity at initialisation.

    Args:
        channels: input channels C.
        rd_ratio: query/key width of the position module as a fraction of C.
        rd_channels: query/key width of the position module, overriding ``rd_ratio``.
        rd_divisor: the query/key width is rounded to a multiple of this.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``"position"`` ``(B, HW, HW)``
        and ``"channel"`` ``(B, C, C)``.

    Example:
        >>> import torch
        >>> layer = DualAttention(64)
        >>> layer(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.channels = check_channels(type(self).__name__, channels)
        self.pam = PositionAttention(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor)
        self.cam = ChannelAttention(channels)

    def reset_parameters(self) -> None:
        self.pam.reset_parameters()
        self.cam.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        # `attend` never emits: both maps are stored under this layer's path.
        pos, pos_attn = self.pam.attend(x, self.recording)
        chan, chan_attn = self.cam.attend(x)
        if self.recording:
            self.emit("position", pos_attn)
            self.emit("channel", chan_attn)
        return x + self.pam.gamma * pos + self.cam.gamma * chan
