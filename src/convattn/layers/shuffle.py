"""SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (Zhang, Yang; ICASSP 2021). https://arxiv.org/abs/2102.00240"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, get_layer
from ._recording import RecordsAttention

__all__ = ["ShuffleAttention"]

_AUTO_GROUPS = (64, 32, 16, 8, 4, 2, 1)


@register_attn(
    "shuffle",
    kind="gate",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks, Zhang & Yang, ICASSP 2021",
)
class ShuffleAttention(RecordsAttention):
    """Shuffle attention: per-group channel and spatial gates, then a channel shuffle.

    The channels are split into G groups, and each group into two halves of
    ``C/(2G)`` channels. With per-channel parameters ``W₁, b₁, W₂, b₂`` shared by
    the groups (Eq. 1-3)::

        channel half:  x'₁ = σ(W₁ · GAP(x₁) + b₁) · x₁
        spatial half:  x'₂ = σ(W₂ · GN(x₂) + b₂) · x₂

    ``GN`` is a group norm with one group per channel (and its own affine
    parameters, as in the authors' code). The halves are concatenated back in
    place and the C channels shuffled with 2 groups. ``W`` start at 0 and ``b`` at 1
    (the authors' code), so at initialisation both gates are the constant σ(1).

    Args:
        channels: input channels C, divisible by ``2 · groups``.
        groups: number of groups G; ``None`` takes the largest of 64, 32, 16, 8, 4,
            2, 1 with ``C % 2G == 0`` (64, the paper's value, from C = 128 up; 8 at
            C = 16). An explicit value that does not divide raises ``ConfigError``.
        eps: the group norm's ε.
        gate_layer: the gate σ.

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records ``"channel"`` ``(B, C/2)`` and
        ``"spatial"`` ``(B, C/2, H, W)``, the gates of the two halves in group order.

    Example:
        >>> import torch
        >>> layer = ShuffleAttention(16)
        >>> layer.groups
        8
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int | None = None,
        eps: float = 1e-5,
        gate_layer: str | type[nn.Module] = "sigmoid",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ShuffleAttention", channels)
        if groups is None:
            groups = next((g for g in _AUTO_GROUPS if channels % (2 * g) == 0), None)
            if groups is None:
                raise ConfigError(f"ShuffleAttention expects an even number of channels, got channels={channels}")
        elif isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0 or channels % (2 * groups):
            raise ConfigError(
                f"ShuffleAttention expects groups to be a positive int with channels % (2 * groups) == 0, "
                f"got groups={groups!r} for channels={channels}"
            )
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.empty(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.empty(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.empty(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.empty(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half, eps=eps)
        self.gate = get_layer(gate_layer, owner="ShuffleAttention", arg="gate_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.cweight)
        nn.init.ones_(self.cbias)
        nn.init.zeros_(self.sweight)
        nn.init.ones_(self.sbias)
        self.gn.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("ShuffleAttention", x, self.channels)
        b, c, h, w = x.shape
        xg = x.reshape(b * self.groups, c // self.groups, h, w)
        x1, x2 = xg.chunk(2, dim=1)
        gc = self.gate(self.cweight * x1.mean(dim=(2, 3), keepdim=True) + self.cbias)
        gs = self.gate(self.sweight * self.gn(x2) + self.sbias)
        if self.recording:
            self.emit("channel", gc.reshape(b, c // 2))
            self.emit("spatial", gs.reshape(b, c // 2, h, w))
        out = torch.cat([x1 * gc, x2 * gs], dim=1).reshape(b, 2, c // 2, h, w)
        return out.transpose(1, 2).reshape(b, c, h, w)
