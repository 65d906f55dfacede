"""``simple_cnn``: a small plain CNN for 28–64 px inputs, the demo backbone.

Three conv(3×3) → BN → ReLU → [attention] → max-pool(2) blocks with 32, 64 and 128
filters, global average pooling and a linear classifier. The attention layer (any
registered ``"gate"`` layer) sits after each block's activation, before pooling, so
its maps have the block's full resolution. It trains in seconds per epoch on a CPU.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import create_attn, get_attn_info
from ._wrappers import IdentityBlend
from .registry import register_model

__all__ = ["ConvBlock", "SimpleCNN", "make_attention"]


def make_attention(
    attention: str | type | None, channels: int, attn_kwargs: dict[str, Any] | None = None, *, identity_init: bool = False
) -> nn.Module:
    """Build a shape-preserving attention layer, or ``nn.Identity`` for ``None``.

    Raises ``ConfigError`` for unknown layers and layers that are not of kind ``"gate"``,
    ``UnknownOptionError`` for unknown options.
    """
    if attention is None:
        return nn.Identity()
    info = get_attn_info(attention) if isinstance(attention, str) else None
    if info is not None and (info.kind != "gate" or info.ndim != 4):
        raise ConfigError(
            f"{attention!r} is a {info.kind!r} layer for {info.ndim}-D inputs; this model takes "
            "shape-preserving 'gate' layers for images (B, C, H, W)"
        )
    layer = create_attn(attention, channels, **(attn_kwargs or {}))
    return IdentityBlend(layer) if identity_init else layer


class ConvBlock(nn.Sequential):
    """conv 3×3 → BN → ReLU → attention → max-pool 2 (``pool=False``: no pooling)."""

    def __init__(self, in_channels: int, out_channels: int, *, attn: nn.Module | None = None, pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.attn = attn if attn is not None else nn.Identity()
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if pool else nn.Identity()


class SimpleCNN(nn.Module):
    """A plain CNN: ``len(widths)`` :class:`ConvBlock` stages, global average pooling, linear head.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        widths: filters of each block.
        attention: layer after each block's activation (``None``: none).
        attn_kwargs: its options.
        identity_init: wrap each layer so it starts as the identity.
        dropout: dropout before the classifier.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``, any ``H, W >= 1``.

    Example:
        >>> import torch
        >>> net = SimpleCNN(num_classes=10, in_chans=1, attention="se")
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        attention: str | type | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        identity_init: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(f"SimpleCNN expects widths to be positive ints, got {widths!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"SimpleCNN expects dropout in [0, 1), got {dropout!r}")
        self.widths = widths
        blocks, prev = [], in_chans
        for w in widths:
            blocks.append(ConvBlock(prev, w, attn=make_attention(attention, w, attn_kwargs, identity_init=identity_init)))
            prev = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(prev, num_classes)
        self.num_features = prev
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.stages.modules():
            if isinstance(m, ConvBlock):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.ones_(m.bn.weight)
                nn.init.zeros_(m.bn.bias)
        self.fc.reset_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after the last block, ``(B, widths[-1], H', W')``."""
        return self.stages(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.stages(x)), 1)))


@register_model("simple_cnn")
def simple_cnn(
    *,
    num_classes: int,
    in_chans: int = 3,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    widths: Sequence[int] = (32, 64, 128),
    identity_init: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """The demo backbone (:class:`SimpleCNN`): 32/64/128-filter blocks, attention after each."""
    return SimpleCNN(
        num_classes=num_classes,
        in_chans=in_chans,
        widths=widths,
        attention=attention,
        attn_kwargs=attn_kwargs,
        identity_init=identity_init,
        dropout=dropout,
    )
